/*
 * Policy.Watch on a background thread; kicks on the broker's main thread.
 *
 * Threading: the watch thread owns the channel's completion queue and the
 * current call. `lock` guards everything the two threads share: the kick
 * queue, the counters, the stream state for logging, `stopping` and `call`
 * (so that watch_destroy() can cancel a stream the thread is blocked on).
 *
 * The stream uses wait-for-ready: while policyd is down the call waits for
 * the channel (which reconnects with a short backoff) instead of failing.
 * A stream that ends anyway (daemon restart, an error status) is opened
 * again after a backoff of 100 ms doubling to 5 s, reset by any event.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/status.h>
#include <grpc/support/time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "broker_compat.h"
#include "conn.h"
#include "logging.h"
#include "policyd/v1/policy.pb-c.h"
#include "link_tls.h"
#include "tick_wake.h"
#include "watch.h"

#define WATCH_METHOD "/policyd.v1.Policy/Watch"
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
/* The daemon splits kick lists into events of 500 names; this leaves room. */
#define MAX_EVENT_BYTES (4 * 1024 * 1024)
/* Kicks waiting for the main thread; beyond this they are dropped and
 * counted (the dropped clients still get every check answered by the new
 * generation, they only keep their session). */
#define KICK_QUEUE_MAX 65536
/* Kicks per tick, so that a mass revocation never stalls the broker loop. */
#define KICKS_PER_TICK 1000
/* A TICK spends at most this long disconnecting clients; the rest wait. */
#define KICK_BUDGET_MS 20
/* Names taken off the queue per TICK: sorted, de-duplicated and matched
 * against the connection table in one pass. */
#define KICK_NAMES_PER_TICK 8192
#define MAX_USERNAME_LEN 65535
#define STATUS_TEXT_MAX 160
/* A SHA-256 today; a longer digest is not kept (the daemon then cannot use it). */
#define POLICY_DIGEST_MAX 64

struct kick_queue {
	char **names;       /* ring of KICK_QUEUE_MAX strdup'd names */
	size_t head;
	size_t count;
};

/* Disconnections by certificate or by class, from the latest events; taken
 * by the main thread, which matches them against the connections it has. */
struct pending_dooms {
	struct conn_revocations *building;    /* chunks of a list still arriving */
	uint64_t building_generation;
	uint32_t next_chunk;
	struct conn_revocations *complete;    /* the latest whole list, sorted, or NULL */
	bool all_named;
	bool anonymous;
};

/* What the main thread logs; written by the watch thread under lock. */
struct stream_state {
	bool connected;
	unsigned long opened;                /* streams that delivered their first event */
	uint64_t generation;                 /* last event's generation */
	unsigned long losses;                /* streams that ended after connecting */
	uint64_t asked_from;                 /* known_generation of the stream in force */
	uint8_t digest[POLICY_DIGEST_MAX];   /* policy_digest of `generation` (digest_len 0: none) */
	size_t digest_len;
	char last_status[STATUS_TEXT_MAX];   /* why the last stream ended */
};

struct policyd_watch {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	pthread_t thread;
	bool thread_running;
	bool stopping;                       /* under lock */
	grpc_call *call;                     /* under lock: the open stream, if any */

	grpc_channel *channel;
	grpc_completion_queue *cq;
	grpc_slice method;
	char *broker_id;
	_Atomic uint64_t *generation;
	struct tick_wake *tick;              /* woken when an event brings kicks, or NULL */

	struct kick_queue queue;             /* under lock */
	char **tick_names;                   /* main thread: names taken off the queue, de-duplicated */
	bool *tick_matched;                  /* main thread: tick_names[i] has a record in the conn table */
	size_t unmatched_next, unmatched_end; /* main thread: tick_names left to kick by username */
	struct pending_dooms dooms;          /* under lock */
	struct watch_stats stats;            /* under lock */
	struct stream_state state;           /* under lock */
	/* Raised by the watch thread, before it lets go of the lock, after any
	 * change the main thread acts on or logs: an idle TICK (every pass of
	 * 2.0's loop) then costs one atomic load instead of the lock. */
	_Atomic uint64_t news;

	/* Main thread only. */
	uint64_t news_seen;                  /* `news` when the main thread last took everything */
	bool names_queued;                   /* the kick queue still held names then */
	struct stream_state logged;
	struct log_limiter kick_log;
	struct log_limiter drop_log;
	struct log_limiter bad_log;
	uint64_t dropped_logged;
	uint64_t bad_logged;
	uint64_t incomplete_logged;
};

/* Tags of the stream's three kinds of batch. */
struct stream_ops {
	int start;
	int message;
	int status;
};


/* ------------------------------------------------------------ kick queue */

static bool username_usable(const uint8_t *data, size_t len)
{
	/* Never an empty name: mosquitto_kick_client_by_username(NULL) would
	 * disconnect every anonymous client. A NUL would cut the name short. */
	return len > 0 && len <= MAX_USERNAME_LEN && memchr(data, '\0', len) == NULL;
}


/* Under lock. */
static void kick_enqueue(struct policyd_watch *w, const uint8_t *data, size_t len)
{
	char *name;

	if(!username_usable(data, len) || w->queue.count == KICK_QUEUE_MAX){
		w->stats.kicks_dropped++;
		return;
	}
	name = malloc(len + 1);
	if(name == NULL){
		w->stats.kicks_dropped++;
		return;
	}
	memcpy(name, data, len);
	name[len] = '\0';
	w->queue.names[(w->queue.head + w->queue.count) % KICK_QUEUE_MAX] = name;
	w->queue.count++;
	w->stats.kicks_queued++;
}


/* Under lock: moves up to `max` names into out[]. */
static size_t kick_dequeue(struct policyd_watch *w, char **out, size_t max)
{
	size_t n = 0;

	while(n < max && w->queue.count > 0){
		out[n++] = w->queue.names[w->queue.head];
		w->queue.head = (w->queue.head + 1) % KICK_QUEUE_MAX;
		w->queue.count--;
	}
	return n;
}


/* ------------------------------------------------------------- events */

/* Watch thread, under lock: the last step of any change the main thread must see. */
static void news_unlock(struct policyd_watch *w)
{
	atomic_fetch_add_explicit(&w->news, 1, memory_order_release);
	pthread_mutex_unlock(&w->lock);
}


static void generation_raise(_Atomic uint64_t *generation, uint64_t seen)
{
	uint64_t cur = atomic_load(generation);

	while(seen > cur && !atomic_compare_exchange_weak(generation, &cur, seen)){
	}
}


/* Under lock. A list arrives as chunks 0..n-1 of one generation, in order; a
 * gap, a malformed entry or an oversized list drops what was gathered (the
 * next stream or reload sends the whole list again). True: the list is whole. */
static bool revocations_add_chunk(struct policyd_watch *w, const Policyd__V1__PolicyEvent *ev)
{
	struct pending_dooms *d = &w->dooms;
	uint32_t chunks = ev->revocation_chunks ? ev->revocation_chunks : 1;
	bool ok;
	size_t i;

	if(ev->revocation_chunk == 0){
		conn_revocations_free(d->building);
		d->building = conn_revocations_create();
		d->building_generation = ev->generation;
		d->next_chunk = 0;
	}
	ok = d->building != NULL && ev->revocation_chunk == d->next_chunk && ev->generation == d->building_generation;
	for(i = 0; ok && i < ev->n_revoked_serials; i++){
		ok = conn_revocations_add_serial(d->building, ev->revoked_serials[i].data, ev->revoked_serials[i].len);
	}
	for(i = 0; ok && i < ev->n_revoked_sha256; i++){
		ok = conn_revocations_add_sha256(d->building, ev->revoked_sha256[i].data, ev->revoked_sha256[i].len);
	}
	if(!ok){
		conn_revocations_free(d->building);
		d->building = NULL;
		w->stats.bad_events++;
		return false;
	}
	if(++d->next_chunk == chunks){
		conn_revocations_sort(d->building);
		conn_revocations_free(d->complete);
		d->complete = d->building;
		d->building = NULL;
		return true;
	}
	return false;
}


static bool event_apply(struct policyd_watch *w, grpc_byte_buffer *buf)
{
	Policyd__V1__PolicyEvent *ev;
	grpc_byte_buffer_reader reader;
	grpc_slice flat;
	size_t i;
	bool act;

	if(!grpc_byte_buffer_reader_init(&reader, buf)){
		pthread_mutex_lock(&w->lock);
		w->stats.bad_events++;
		news_unlock(w);
		return false;
	}
	flat = grpc_byte_buffer_reader_readall(&reader);
	grpc_byte_buffer_reader_destroy(&reader);
	ev = policyd__v1__policy_event__unpack(NULL, GRPC_SLICE_LENGTH(flat), GRPC_SLICE_START_PTR(flat));
	grpc_slice_unref(flat);
	if(ev == NULL){
		pthread_mutex_lock(&w->lock);
		w->stats.bad_events++;
		news_unlock(w);
		return false;
	}
	/* The generation first: a kicked client that reconnects at once must
	 * not be answered from a cache of the old generation. */
	generation_raise(w->generation, ev->generation);
	pthread_mutex_lock(&w->lock);
	w->stats.events++;
	if(!w->state.connected){
		w->state.opened++;
	}
	w->state.connected = true;
	/* The digest comes with a generation's first event; later chunks carry none. */
	if(ev->generation != w->state.generation || ev->policy_digest.len > 0){
		w->state.digest_len = ev->policy_digest.len <= POLICY_DIGEST_MAX ? ev->policy_digest.len : 0;
		if(w->state.digest_len > 0){
			memcpy(w->state.digest, ev->policy_digest.data, w->state.digest_len);
		}
	}
	w->state.generation = ev->generation;
	for(i = 0; i < ev->n_kick_usernames; i++){
		kick_enqueue(w, ev->kick_usernames[i].data, ev->kick_usernames[i].len);
	}
	/* Some kick since the generation this broker asked from may be lost: any
	 * session may be one the policy no longer allows, so every one ends and
	 * is checked again when it reconnects. */
	if(ev->replay_incomplete){
		w->stats.replays_incomplete++;
	}
	w->dooms.all_named |= ev->kick_all_named || ev->replay_incomplete;
	w->dooms.anonymous |= ev->kick_anonymous || ev->replay_incomplete;
	act = ev->n_kick_usernames > 0 || ev->kick_all_named || ev->kick_anonymous || ev->replay_incomplete;
	if(ev->has_revocations && revocations_add_chunk(w, ev)){
		act = true;
	}
	news_unlock(w);
	policyd__v1__policy_event__free_unpacked(ev, NULL);
	/* Kicks wait for the main thread's tick: have it come now. */
	if(act){
		tick_wake_now(w->tick);
	}
	return true;
}


/* --------------------------------------------------------------- stream */

/* known_generation: the last generation a stream delivered (0: none), so
 * that the daemon replays the kicks of reloads this broker missed, and the
 * digest of that policy (a daemon serving the same content knows nothing was
 * missed). Not the shared generation: a check answer may have raised that
 * without its kicks. */
static grpc_byte_buffer *encode_request(const char *broker_id, uint64_t known_generation,
		const uint8_t *digest, size_t digest_len)
{
	Policyd__V1__WatchRequest msg = POLICYD__V1__WATCH_REQUEST__INIT;
	grpc_byte_buffer *buf;
	grpc_slice slice;
	size_t len;

	msg.broker_id = (char *)broker_id;
	msg.known_generation = known_generation;
	msg.known_policy_digest.data = (uint8_t *)digest;
	msg.known_policy_digest.len = digest_len;
	len = policyd__v1__watch_request__get_packed_size(&msg);
	slice = grpc_slice_malloc(len);
	policyd__v1__watch_request__pack(&msg, GRPC_SLICE_START_PTR(slice));
	buf = grpc_raw_byte_buffer_create(&slice, 1);
	grpc_slice_unref(slice);
	return buf;
}


/* Registers the call so watch_destroy() can cancel it; NULL when stopping. */
static grpc_call *stream_call_create(struct policyd_watch *w)
{
	grpc_call *call = NULL;

	pthread_mutex_lock(&w->lock);
	if(!w->stopping){
		call = grpc_channel_create_call(w->channel, NULL, GRPC_PROPAGATE_DEFAULTS, w->cq,
				w->method, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
		w->call = call;
	}
	pthread_mutex_unlock(&w->lock);
	return call;
}


static bool stream_start(grpc_call *call, grpc_byte_buffer *request, grpc_metadata_array *initial_md,
		struct stream_ops *tags)
{
	grpc_op ops[4];

	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[0].flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = request;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = initial_md;
	return grpc_call_start_batch(call, ops, 4, &tags->start, NULL) == GRPC_CALL_OK;
}


static bool stream_recv_status(grpc_call *call, grpc_metadata_array *trailing_md,
		grpc_status_code *status, grpc_slice *details, struct stream_ops *tags)
{
	grpc_op op;

	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	op.data.recv_status_on_client.trailing_metadata = trailing_md;
	op.data.recv_status_on_client.status = status;
	op.data.recv_status_on_client.status_details = details;
	return grpc_call_start_batch(call, &op, 1, &tags->status, NULL) == GRPC_CALL_OK;
}


static bool stream_recv_message(grpc_call *call, grpc_byte_buffer **buf, struct stream_ops *tags)
{
	grpc_op op;

	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_RECV_MESSAGE;
	op.data.recv_message.recv_message = buf;
	return grpc_call_start_batch(call, &op, 1, &tags->message, NULL) == GRPC_CALL_OK;
}


/* Waits for one batch of this call to complete; returns its tag. The queue
 * only carries this call's batches, and is not shut down while the thread runs. */
static void *stream_next(struct policyd_watch *w, int *pending)
{
	grpc_event ev;

	ev = grpc_completion_queue_next(w->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
	if(ev.type != GRPC_OP_COMPLETE){
		*pending = 0;
		return NULL;
	}
	(*pending)--;
	return ev.tag;
}


/* Waits for the batch tagged `want`, counting down others that complete meanwhile. */
static void stream_wait(struct policyd_watch *w, void *want, int *pending)
{
	while(*pending > 0 && stream_next(w, pending) != want){
	}
}


static void stream_record_end(struct policyd_watch *w, grpc_status_code status, grpc_slice details)
{
	char text[STATUS_TEXT_MAX - 32];   /* room for "status NN: " */
	size_t len = GRPC_SLICE_LENGTH(details);

	if(len >= sizeof(text)){
		len = sizeof(text) - 1;
	}
	memcpy(text, GRPC_SLICE_START_PTR(details), len);
	text[len] = '\0';
	pthread_mutex_lock(&w->lock);
	if(w->state.connected){
		w->state.losses++;
	}
	w->state.connected = false;
	snprintf(w->state.last_status, sizeof(w->state.last_status), "status %d%s%s",
			(int)status, text[0] ? ": " : "", text);
	w->call = NULL;
	news_unlock(w);
}


/* One stream from open to end; true if it delivered at least one event. */
static bool stream_run(struct policyd_watch *w)
{
	struct stream_ops tags;
	grpc_metadata_array initial_md, trailing_md;
	grpc_status_code status = GRPC_STATUS_UNKNOWN;
	grpc_slice details = grpc_empty_slice();
	grpc_byte_buffer *request, *buf = NULL;
	grpc_call *call;
	uint64_t known;
	uint8_t digest[POLICY_DIGEST_MAX];
	size_t digest_len;
	int pending = 0;
	bool got_event = false;

	call = stream_call_create(w);
	if(call == NULL){
		return false;
	}
	pthread_mutex_lock(&w->lock);
	w->stats.streams++;
	known = w->state.generation;
	w->state.asked_from = known;
	digest_len = w->state.digest_len;
	memcpy(digest, w->state.digest, digest_len);
	news_unlock(w);
	request = encode_request(w->broker_id, known, digest, digest_len);
	grpc_metadata_array_init(&initial_md);
	grpc_metadata_array_init(&trailing_md);

	if(stream_start(call, request, &initial_md, &tags)){
		pending++;
		if(stream_recv_status(call, &trailing_md, &status, &details, &tags)){
			pending++;
			/* Each message in turn; a NULL buffer means the stream ended. */
			while(stream_recv_message(call, &buf, &tags)){
				pending++;
				stream_wait(w, &tags.message, &pending);
				if(buf == NULL){
					break;
				}
				got_event |= event_apply(w, buf);
				grpc_byte_buffer_destroy(buf);
				buf = NULL;
			}
		}
	}
	/* Ends the call if it is still open, then reaps every batch so nothing
	 * they write into is freed under them. */
	grpc_call_cancel(call, NULL);
	while(pending > 0){
		stream_next(w, &pending);
	}
	stream_record_end(w, status, details);
	grpc_call_unref(call);
	grpc_byte_buffer_destroy(request);
	grpc_metadata_array_destroy(&initial_md);
	grpc_metadata_array_destroy(&trailing_md);
	grpc_slice_unref(details);
	return got_event;
}


/* Sleeps ms unless woken by watch_destroy(); false when stopping. */
static bool backoff_sleep(struct policyd_watch *w, int ms)
{
	struct timespec until;
	bool go_on;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (long)(ms % 1000) * 1000000L;
	if(until.tv_nsec >= 1000000000L){
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&w->lock);
	while(!w->stopping){
		if(pthread_cond_timedwait(&w->wake, &w->lock, &until) == ETIMEDOUT){
			break;
		}
	}
	go_on = !w->stopping;
	pthread_mutex_unlock(&w->lock);
	return go_on;
}


static void *watch_main(void *arg)
{
	struct policyd_watch *w = arg;
	int backoff = BACKOFF_MIN_MS;

	for(;;){
		if(stream_run(w)){
			backoff = BACKOFF_MIN_MS;
		}
		if(!backoff_sleep(w, backoff)){
			break;
		}
		backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
	}
	return NULL;
}


/* ------------------------------------------------------------- lifecycle */

static void cq_drain_destroy(grpc_completion_queue *cq)
{
	grpc_event ev;

	grpc_completion_queue_shutdown(cq);
	do{
		ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
	}while(ev.type != GRPC_QUEUE_SHUTDOWN);
	grpc_completion_queue_destroy(cq);
}


static void watch_free(struct policyd_watch *w)
{
	char *name;

	if(w->channel){
		grpc_channel_destroy(w->channel);
	}
	if(w->cq){
		cq_drain_destroy(w->cq);
	}
	if(w->queue.names){
		while(kick_dequeue(w, &name, 1) == 1){
			free(name);
		}
		free(w->queue.names);
	}
	conn_revocations_free(w->dooms.building);
	conn_revocations_free(w->dooms.complete);
	while(w->tick_names != NULL && w->unmatched_next < w->unmatched_end){
		free(w->tick_names[w->unmatched_next++]);
	}
	free(w->tick_names);
	free(w->tick_matched);
	grpc_slice_unref(w->method);
	free(w->broker_id);
	pthread_cond_destroy(&w->wake);
	pthread_mutex_destroy(&w->lock);
	free(w);
	grpc_shutdown();
}


/* The thread must not take the broker's signals (SIGTERM, SIGHUP, ...). */
static int thread_start(struct policyd_watch *w)
{
	sigset_t all, saved;
	int rc;

	sigfillset(&all);
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGBUS);
	sigdelset(&all, SIGFPE);
	sigdelset(&all, SIGILL);
	pthread_sigmask(SIG_BLOCK, &all, &saved);
	rc = pthread_create(&w->thread, NULL, watch_main, w);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	return rc;
}


struct policyd_watch *watch_create(const struct watch_options *opts, const char **errmsg)
{
	struct policyd_watch *w;
	const char *ignored;

	if(errmsg == NULL){
		errmsg = &ignored;
	}
	if(opts == NULL || opts->target == NULL || opts->generation == NULL){
		*errmsg = "invalid watch options";
		return NULL;
	}
	w = calloc(1, sizeof(*w));
	if(w == NULL){
		*errmsg = "out of memory";
		return NULL;
	}
	grpc_init(); /* reference counted; released in watch_free() */
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->wake, NULL);
	w->method = grpc_slice_from_static_string(WATCH_METHOD);
	w->generation = opts->generation;
	w->tick = opts->wake;
	w->broker_id = strdup(opts->broker_id ? opts->broker_id : "");
	w->queue.names = calloc(KICK_QUEUE_MAX, sizeof(char *));
	w->tick_names = calloc(KICK_NAMES_PER_TICK, sizeof(char *));
	w->tick_matched = calloc(KICK_NAMES_PER_TICK, sizeof(bool));
	w->cq = grpc_completion_queue_create_for_next(NULL);
	w->channel = link_channel_create(opts->target, opts->tls, MAX_EVENT_BYTES, opts->keepalive_ms);
	log_limiter_init(&w->kick_log, 5);
	log_limiter_init(&w->drop_log, 1);
	log_limiter_init(&w->bad_log, 1);
	if(w->broker_id == NULL || w->queue.names == NULL || w->tick_names == NULL || w->tick_matched == NULL
			|| w->cq == NULL
			|| w->channel == NULL){
		*errmsg = "cannot set up the Watch stream (out of memory or bad target)";
		watch_free(w);
		return NULL;
	}
	if(thread_start(w) != 0){
		*errmsg = "cannot start the Watch thread";
		watch_free(w);
		return NULL;
	}
	w->thread_running = true;
	return w;
}


void watch_destroy(struct policyd_watch *w)
{
	if(w == NULL){
		return;
	}
	if(w->thread_running){
		pthread_mutex_lock(&w->lock);
		w->stopping = true;
		if(w->call){
			grpc_call_cancel(w->call, NULL);
		}
		pthread_cond_broadcast(&w->wake);
		pthread_mutex_unlock(&w->lock);
		pthread_join(w->thread, NULL);
		w->thread_running = false;
	}
	watch_free(w);
}


void watch_stats_get(struct policyd_watch *w, struct watch_stats *out)
{
	memset(out, 0, sizeof(*out));
	if(w == NULL){
		return;
	}
	pthread_mutex_lock(&w->lock);
	*out = w->stats;
	out->connected = w->state.connected;
	pthread_mutex_unlock(&w->lock);
}


/* ------------------------------------------------------------ main thread */

static void log_stream_changes(struct policyd_watch *w, const struct stream_state *now)
{
	char shown[LOG_TOPIC_MAX];

	if(now->losses != w->logged.losses){
		/* The status text may come from the daemon: escape it. */
		plog(MOSQ_LOG_WARNING, "Watch stream lost (%s); reopening. Until then reloads reach this "
				"broker through check answers only, and kicks wait for the new stream",
				log_sanitize_str(shown, sizeof(shown), now->last_status));
	}
	if(now->opened != w->logged.opened){
		plog(MOSQ_LOG_INFO, "Watch stream open: policy generation %" PRIu64, now->generation);
	}else if(now->generation != w->logged.generation){
		plog(MOSQ_LOG_INFO, "policy generation %" PRIu64 " announced by policyd", now->generation);
	}
	w->logged = *now;
}


static int name_order(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}


/* Names the policy took access from: each name once. Clients the plugin
 * knows (any that made a check) are marked and kicked by client id, a hash
 * lookup in the broker; the names left over (connected but never checked,
 * or not connected at all) are kicked by username later, within the TICK's
 * time budget, as that call scans every connection of the broker. */
static void doom_named(struct policyd_watch *w, struct conn_table *conns, size_t n)
{
	char **names = w->tick_names;
	size_t i, unique = 0, marked, left = 0;

	qsort(names, n, sizeof(*names), name_order);
	for(i = 0; i < n; i++){
		if(unique > 0 && strcmp(names[unique - 1], names[i]) == 0){
			free(names[i]);
		}else{
			names[unique++] = names[i];
		}
	}
	memset(w->tick_matched, 0, unique * sizeof(*w->tick_matched));
	marked = conn_doom_usernames(conns, names, unique, w->tick_matched);
	for(i = 0; i < unique; i++){
		if(w->tick_matched[i]){
			free(names[i]);
		}else{
			names[left++] = names[i];
		}
	}
	w->unmatched_next = 0;
	w->unmatched_end = left;
	if(marked > 0){
		plog(MOSQ_LOG_NOTICE, "disconnecting %zu client(s): the new policy took access from %zu name(s) "
				"(%zu more name(s) to try by username)", marked, unique, left);
	}
}


/* Kicks by username the names no record matched, until the deadline. */
static void kick_unmatched(struct policyd_watch *w, int64_t deadline_ms)
{
	char shown[LOG_IDENT_MAX];
	uint64_t done = 0, failed = 0;
	char *name;
	int rc;

	while(w->unmatched_next < w->unmatched_end && (done + failed == 0 || monotonic_ms() < deadline_ms)){
		name = w->tick_names[w->unmatched_next++];
		rc = mosquitto_kick_client_by_username(name, false);
		if(rc == MOSQ_ERR_SUCCESS){
			done++;
		}else{
			failed++;
			if(log_limiter_admit(&w->kick_log)){
				plog_admitted(&w->kick_log, MOSQ_LOG_ERR, "cannot disconnect clients of '%s': %s",
						log_sanitize_str(shown, sizeof(shown), name), broker_rc_text(rc));
			}
		}
		free(name);
	}
	if(done + failed > 0){
		pthread_mutex_lock(&w->lock);
		w->stats.kicks_done += done;
		w->stats.kicks_failed += failed;
		pthread_mutex_unlock(&w->lock);
	}
}


/* Certificate revocations and class kicks become marked connections. */
static void mark_dooms(struct conn_table *conns, struct pending_dooms *dooms)
{
	size_t marked = 0;

	if(dooms->complete != NULL){
		marked += conn_doom_revoked(conns, dooms->complete);
		conn_revocations_free(dooms->complete);
	}
	if(dooms->all_named){
		marked += conn_doom_class(conns, true);
	}
	if(dooms->anonymous){
		marked += conn_doom_class(conns, false);
	}
	if(marked > 0){
		plog(MOSQ_LOG_NOTICE, "disconnecting %zu client(s): the new policy revokes their certificate or "
				"took access from %s", marked, dooms->all_named || dooms->anonymous
				? "their whole class of clients" : "them");
	}
}


/* Up to KICKS_PER_TICK marked connections are disconnected. */
static void kick_doomed(struct policyd_watch *w, struct conn_table *conns, int64_t deadline_ms)
{
	size_t kicked, failed;

	kicked = conn_kick_doomed(conns, KICKS_PER_TICK, deadline_ms, &failed);
	if(kicked > 0){
		pthread_mutex_lock(&w->lock);
		w->stats.kicks_done += kicked - failed;
		w->stats.kicks_failed += failed;
		pthread_mutex_unlock(&w->lock);
	}
}


/* Logs what changed since the last look. */
static void log_news(struct policyd_watch *w, const struct stream_state *state,
		uint64_t dropped, uint64_t bad, uint64_t incomplete)
{
	if(incomplete != w->incomplete_logged){
		/* At most once per reopened stream, itself backed off: no limiter needed. */
		plog(MOSQ_LOG_WARNING, "Watch stream reopened at policy generation %" PRIu64 ", but policyd "
				"cannot prove it replayed every kick since generation %" PRIu64 ": disconnecting every "
				"client, each is checked under the policy in force when it reconnects",
				state->generation, state->asked_from);
		w->incomplete_logged = incomplete;
	}
	if(bad != w->bad_logged && log_limiter_admit(&w->bad_log)){
		plog_admitted(&w->bad_log, MOSQ_LOG_ERR, "%" PRIu64 " undecodable Watch events ignored",
				bad - w->bad_logged);
		w->bad_logged = bad;
	}
	if(state->opened != w->logged.opened || state->generation != w->logged.generation
			|| state->losses != w->logged.losses){
		log_stream_changes(w, state);
	}
	if(dropped != w->dropped_logged && log_limiter_admit(&w->drop_log)){
		plog_admitted(&w->drop_log, MOSQ_LOG_ERR, "%" PRIu64 " kicks dropped (queue full or unusable "
				"name): those clients stay connected, though every check they make is answered "
				"by the new policy", dropped - w->dropped_logged);
		w->dropped_logged = dropped;
	}
}


/* Takes what the watch thread gathered: names to kick, dooms, counters to log. */
static void take_news(struct policyd_watch *w, struct conn_table *conns)
{
	struct stream_state state;
	struct pending_dooms dooms;
	uint64_t dropped, bad, incomplete;
	size_t n;

	pthread_mutex_lock(&w->lock);
	/* New names only once the last batch is done: the queue holds the rest. */
	n = w->unmatched_next < w->unmatched_end ? 0 : kick_dequeue(w, w->tick_names, KICK_NAMES_PER_TICK);
	w->names_queued = w->queue.count > 0;
	state = w->state;
	dropped = w->stats.kicks_dropped;
	bad = w->stats.bad_events;
	incomplete = w->stats.replays_incomplete;
	dooms = w->dooms;
	w->dooms.complete = NULL;
	w->dooms.all_named = w->dooms.anonymous = false;
	pthread_mutex_unlock(&w->lock);

	log_news(w, &state, dropped, bad, incomplete);
	if(n > 0){
		doom_named(w, conns, n);
	}
	mark_dooms(conns, &dooms);
}


void watch_on_tick(struct policyd_watch *w, struct conn_table *conns, int64_t now_ms)
{
	uint64_t news;

	if(w == NULL){
		return;
	}
	/* Read before the lock: a change made after it is taken at the next TICK. */
	news = atomic_load_explicit(&w->news, memory_order_acquire);
	if(news != w->news_seen || w->names_queued){
		w->news_seen = news;
		take_news(w, conns);
	}
	if(conn_has_doomed(conns)){
		kick_doomed(w, conns, now_ms + KICK_BUDGET_MS);
	}
	if(w->unmatched_next < w->unmatched_end){
		kick_unmatched(w, now_ms + KICK_BUDGET_MS);
	}
}
