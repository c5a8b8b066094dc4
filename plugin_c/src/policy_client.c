/*
 * gRPC C core client for policyd.v1.Policy/CheckAcl.
 *
 * One channel and one pluck completion queue per client; every check is a
 * single batch (send metadata + message + close, receive metadata + message
 * + status) on a fresh call, plucked with the call's deadline plus a small
 * margin. Calls do not use wait-for-ready: while the channel is in
 * TRANSIENT_FAILURE a call fails at once with UNAVAILABLE.
 *
 * gRPC C core (epoll1 poller) only does network I/O while some thread polls
 * a completion queue. The broker's thread polls only during a check, so
 * connecting and the HTTP/2 handshake would never finish between checks
 * and, since calls fail fast, never at all. A small watcher thread therefore
 * waits on the channel's connectivity state: it keeps I/O moving and asks
 * an IDLE channel to (re)connect at once. It makes no broker calls.
 */
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/status.h>
#include <grpc/support/time.h>

#include "policyd/v1/policy.pb-c.h"
#include "link_tls.h"
#include "policy_client.h"

#define CHECK_ACL_METHOD "/policyd.v1.Policy/CheckAcl"
#define REPORT_STATS_METHOD "/policyd.v1.Policy/ReportStats"
#define AUTHENTICATE_METHOD "/policyd.v1.Policy/Authenticate"
/* A stats report is best effort; it must never linger. */
#define REPORT_STATS_TIMEOUT_MS 2000

/* Reconnect quickly after a daemon restart (library defaults: 1 s initial,
 * 20 s minimum connect timeout, 120 s maximum backoff). */
/* While checks keep failing with UNAVAILABLE, cut the reconnect backoff
 * short at most this often so a restarted daemon is found within ~this. */
#define BACKOFF_RESET_INTERVAL_MS 200
/* A CheckAclResponse is a few dozen bytes; refuse anything absurd. */
#define MAX_RESPONSE_BYTES (64 * 1024)
/* Pluck waits this much past the call deadline before cancelling. */
#define PLUCK_MARGIN_MS 50
/* After a cancel, wait for the batch to be reaped at most this long
 * (gRPC completes a cancelled batch promptly; this is a last resort). */
#define REAP_WAIT_MS 1000
#define CQ_SHUTDOWN_WAIT_MS 1000
/* The watcher re-arms its connectivity watch at least this often. */
#define WATCH_INTERVAL_MS 1000

struct policy_client {
	grpc_channel *channel;
	grpc_completion_queue *cq;
	grpc_slice method;
	grpc_slice stats_method;
	grpc_slice auth_method;
	int timeout_ms;
	uintptr_t next_tag;
	gpr_timespec last_backoff_reset;
	unsigned long abandoned;   /* batches that never completed (leaked) */

	/* Watcher thread; `lock` orders its use of `channel` against
	 * policy_client_destroy(). */
	grpc_completion_queue *watch_cq;
	pthread_t watcher;
	bool watcher_running;
	bool lock_ready;
	bool stopping;             /* under lock */
	struct call_ctx *stats_call; /* under lock: the ReportStats call in flight, if any */
	pthread_mutex_t lock;
};

/* Everything a batch writes into lives here, on the heap: if a batch ever
 * failed to complete, the context is leaked instead of freed under it. */
struct call_ctx {
	grpc_call *call;
	void *tag;
	grpc_byte_buffer *send_buf;
	grpc_byte_buffer *recv_buf;
	grpc_metadata_array initial_md;
	grpc_metadata_array trailing_md;
	grpc_status_code status;
	grpc_slice details;
};

enum wait_result {
	WAIT_DONE,        /* the batch completed */
	WAIT_CANCELLED,   /* pluck timed out; cancelled and reaped */
	WAIT_ABANDONED,   /* not even reaped after cancel; ctx must be leaked */
};


/* ---------------------------------------------------------------- helpers */

const char *policy_error_name(enum policy_error error)
{
	switch(error){
		case POLICY_ERR_NONE: return "none";
		case POLICY_ERR_UNAVAILABLE: return "unavailable";
		case POLICY_ERR_DEADLINE: return "deadline";
		case POLICY_ERR_STATUS: return "status";
		case POLICY_ERR_PROTOCOL: return "protocol";
		case POLICY_ERR_INTERNAL: return "internal";
		case POLICY_ERR__COUNT: break;
	}
	return "unknown";
}


bool policy_error_is_no_answer(enum policy_error error)
{
	return error == POLICY_ERR_UNAVAILABLE || error == POLICY_ERR_DEADLINE;
}


static const char *status_name(grpc_status_code code)
{
	static const char *const names[] = {
		"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
		"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
		"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
		"INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
	};

	if((int)code >= 0 && (size_t)code < sizeof(names) / sizeof(names[0])){
		return names[code];
	}
	return "UNRECOGNISED";
}


static gpr_timespec time_after_ms(gpr_timespec base, int64_t ms)
{
	return gpr_time_add(base, gpr_time_from_millis(ms, GPR_TIMESPAN));
}


static gpr_timespec now_after_ms(int64_t ms)
{
	return time_after_ms(gpr_now(GPR_CLOCK_MONOTONIC), ms);
}


static void copy_bytes(char *dst, size_t dstlen, const void *src, size_t srclen)
{
	if(srclen >= dstlen){
		srclen = dstlen - 1;
	}
	if(srclen > 0){
		memcpy(dst, src, srclen);
	}
	dst[srclen] = '\0';
}


static void result_init(struct policy_check_result *result)
{
	memset(result, 0, sizeof(*result));
	result->outcome = POLICY_ERROR;
	result->error = POLICY_ERR_INTERNAL;
}


static void result_error(struct policy_check_result *result, enum policy_error error,
		int grpc_status, const char *detail)
{
	result->outcome = POLICY_ERROR;
	result->error = error;
	result->grpc_status = grpc_status;
	result->generation = 0;
	result->cache_ttl_ms = 0;
	result->cache_scope_len = 0;
	result->more.n = 0;
	result->rule[0] = '\0';
	copy_bytes(result->detail, sizeof(result->detail), detail, strlen(detail));
}


static void cq_destroy(grpc_completion_queue *cq, grpc_cq_completion_type type)
{
	gpr_timespec wait;
	grpc_event ev;
	int i;

	grpc_completion_queue_shutdown(cq);
	for(i = 0; i < 3; i++){
		wait = now_after_ms(CQ_SHUTDOWN_WAIT_MS);
		if(type == GRPC_CQ_PLUCK){
			ev = grpc_completion_queue_pluck(cq, cq, wait, NULL);
		}else{
			ev = grpc_completion_queue_next(cq, wait, NULL);
		}
		if(ev.type == GRPC_QUEUE_SHUTDOWN){
			grpc_completion_queue_destroy(cq);
			return;
		}
	}
	/* Never drained (cannot happen without a stuck call): destroying it
	 * would trip an assertion in gRPC, so leave it. */
}


/* ---------------------------------------------------------------- watcher */

static void call_ctx_free(struct call_ctx *ctx);

/* Arms one connectivity watch unless the client is being destroyed, and
 * says whether the watcher has anything left to wait for. */
static bool watcher_arm(struct policy_client *client, bool *watching)
{
	grpc_connectivity_state state;
	bool more;

	pthread_mutex_lock(&client->lock);
	if(!*watching && !client->stopping){
		/* try_to_connect=1: leave IDLE (start, or the daemon closed the
		 * connection) without waiting for the next check. */
		state = grpc_channel_check_connectivity_state(client->channel, 1);
		if(state != GRPC_CHANNEL_SHUTDOWN){
			grpc_channel_watch_connectivity_state(client->channel, state,
					now_after_ms(WATCH_INTERVAL_MS), client->watch_cq, client);
			*watching = true;
		}
	}
	more = *watching || client->stats_call != NULL;
	pthread_mutex_unlock(&client->lock);
	return more;
}


/* A ReportStats call ended (answered, failed or cancelled): nothing to do
 * with its outcome, which is best effort, but free it. */
static void watcher_reap_stats(struct policy_client *client, struct call_ctx *ctx)
{
	pthread_mutex_lock(&client->lock);
	if(client->stats_call == ctx){
		client->stats_call = NULL;
	}
	pthread_mutex_unlock(&client->lock);
	call_ctx_free(ctx);
}


static void *watcher_main(void *arg)
{
	struct policy_client *client = arg;
	bool watching = false;
	grpc_event ev;

	while(watcher_arm(client, &watching)){
		/* Polling here is what drives the channel's I/O. */
		ev = grpc_completion_queue_next(client->watch_cq,
				gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
		if(ev.type != GRPC_OP_COMPLETE){
			break;
		}
		if(ev.tag == client){
			watching = false;
		}else{
			watcher_reap_stats(client, ev.tag);
		}
	}
	return NULL;
}


/* Threads started from here (ours and those grpc_init() starts) must not
 * take the broker's signals (SIGTERM, SIGHUP, ...). */
static void signals_block_all(sigset_t *saved)
{
	sigset_t all;

	sigfillset(&all);
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGBUS);
	sigdelset(&all, SIGFPE);
	sigdelset(&all, SIGILL);
	pthread_sigmask(SIG_BLOCK, &all, saved);
}


static const char *watcher_start(struct policy_client *client)
{
	if(pthread_mutex_init(&client->lock, NULL) != 0){
		return "cannot create a mutex";
	}
	client->lock_ready = true;
	client->watch_cq = grpc_completion_queue_create_for_next(NULL);
	if(client->watch_cq == NULL){
		return "cannot create gRPC completion queue";
	}
	if(pthread_create(&client->watcher, NULL, watcher_main, client) != 0){
		return "cannot start the connection watcher thread";
	}
	client->watcher_running = true;
	return NULL;
}


static void channel_stop(struct policy_client *client)
{
	if(client->watcher_running){
		pthread_mutex_lock(&client->lock);
		client->stopping = true;
		if(client->stats_call){
			(void)grpc_call_cancel(client->stats_call->call, NULL);
		}
		/* Destroying the channel moves it to SHUTDOWN, which completes
		 * the watcher's pending watch. */
		grpc_channel_destroy(client->channel);
		client->channel = NULL;
		pthread_mutex_unlock(&client->lock);
		pthread_join(client->watcher, NULL);
		client->watcher_running = false;
	}else if(client->channel){
		grpc_channel_destroy(client->channel);
		client->channel = NULL;
	}
	if(client->watch_cq){
		cq_destroy(client->watch_cq, GRPC_CQ_NEXT);
		client->watch_cq = NULL;
	}
	if(client->lock_ready){
		pthread_mutex_destroy(&client->lock);
		client->lock_ready = false;
	}
}


/* ------------------------------------------------------------- lifecycle */

static const char *client_start(struct policy_client *client, const struct policy_client_options *opts)
{
	client->cq = grpc_completion_queue_create_for_pluck(NULL);
	if(client->cq == NULL){
		return "cannot create gRPC completion queue";
	}
	client->channel = link_channel_create(opts->target, opts->tls, MAX_RESPONSE_BYTES, opts->keepalive_ms);
	if(client->channel == NULL){
		return "cannot create gRPC channel";
	}
	return watcher_start(client);
}


struct policy_client *policy_client_create(const struct policy_client_options *opts, const char **errmsg)
{
	struct policy_client *client;
	const char *ignored;
	const char *err;
	sigset_t saved;

	if(errmsg == NULL){
		errmsg = &ignored;
	}
	if(opts == NULL || opts->target == NULL || opts->target[0] == '\0' || opts->timeout_ms <= 0){
		*errmsg = "invalid client options";
		return NULL;
	}
	client = calloc(1, sizeof(*client));
	if(client == NULL){
		*errmsg = "out of memory";
		return NULL;
	}
	client->timeout_ms = opts->timeout_ms;
	client->next_tag = 1;
	client->last_backoff_reset = gpr_inf_past(GPR_CLOCK_MONOTONIC);
	client->method = grpc_slice_from_static_string(CHECK_ACL_METHOD);
	client->stats_method = grpc_slice_from_static_string(REPORT_STATS_METHOD);
	client->auth_method = grpc_slice_from_static_string(AUTHENTICATE_METHOD);

	signals_block_all(&saved);
	grpc_init();
	err = client_start(client, opts);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	if(err != NULL){
		*errmsg = err;
		policy_client_destroy(client);
		return NULL;
	}
	return client;
}


void policy_client_destroy(struct policy_client *client)
{
	if(client == NULL){
		return;
	}
	channel_stop(client);
	if(client->abandoned == 0){
		if(client->cq){
			cq_destroy(client->cq, GRPC_CQ_PLUCK);
		}
		grpc_shutdown();
	}
	/* else: a batch is still owned by gRPC; keep the queue and the library
	 * alive rather than risk an abort in the broker. */
	grpc_slice_unref(client->method);
	grpc_slice_unref(client->stats_method);
	grpc_slice_unref(client->auth_method);
	free(client);
}


/* ------------------------------------------------------------------- call */

static struct call_ctx *call_ctx_new(void)
{
	struct call_ctx *ctx = calloc(1, sizeof(*ctx));

	if(ctx == NULL){
		return NULL;
	}
	grpc_metadata_array_init(&ctx->initial_md);
	grpc_metadata_array_init(&ctx->trailing_md);
	ctx->details = grpc_empty_slice();
	ctx->status = GRPC_STATUS_UNKNOWN;
	return ctx;
}


static void call_ctx_free(struct call_ctx *ctx)
{
	if(ctx->call){
		grpc_call_unref(ctx->call);
	}
	if(ctx->send_buf){
		grpc_byte_buffer_destroy(ctx->send_buf);
	}
	if(ctx->recv_buf){
		grpc_byte_buffer_destroy(ctx->recv_buf);
	}
	grpc_metadata_array_destroy(&ctx->initial_md);
	grpc_metadata_array_destroy(&ctx->trailing_md);
	grpc_slice_unref(ctx->details);
	free(ctx);
}


/* Any protobuf-c message, packed into a new gRPC byte buffer (NULL on failure). */
static grpc_byte_buffer *pack_message(const ProtobufCMessage *msg)
{
	grpc_byte_buffer *buf;
	grpc_slice slice;
	size_t len;

	len = protobuf_c_message_get_packed_size(msg);
	slice = grpc_slice_malloc(len);
	if(protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice)) != len){
		grpc_slice_unref(slice);
		return NULL;
	}
	buf = grpc_raw_byte_buffer_create(&slice, 1); /* takes its own ref */
	grpc_slice_unref(slice);
	return buf;
}


static grpc_byte_buffer *encode_request(const struct policy_check_request *req)
{
	Policyd__V1__CheckAclRequest msg = POLICYD__V1__CHECK_ACL_REQUEST__INIT;
	msg.has_username = req->username != NULL;
	if(req->username){
		msg.username.data = (uint8_t *)req->username;
		msg.username.len = req->username_len;
	}
	msg.client_id.data = (uint8_t *)req->client_id;
	msg.client_id.len = req->client_id ? req->client_id_len : 0;
	msg.topic.data = (uint8_t *)req->topic;
	msg.topic.len = req->topic ? req->topic_len : 0;
	msg.access = (Policyd__V1__Access)req->access;
	msg.provenance = (Policyd__V1__Provenance)req->provenance;
	if(req->certificate_der != NULL){
		msg.certificate_der.data = (uint8_t *)req->certificate_der;
		msg.certificate_der.len = req->certificate_der_len;
	}
	msg.identity_mode = req->identity_by_daemon ? POLICYD__V1__IDENTITY_MODE__IDENTITY_MODE_DAEMON
			: POLICYD__V1__IDENTITY_MODE__IDENTITY_MODE_BROKER;
	msg.want_scopes = req->want_scopes;

	return pack_message(&msg.base);
}


static grpc_call_error call_start(struct call_ctx *ctx)
{
	grpc_op ops[6];

	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[0].data.send_initial_metadata.count = 0;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = ctx->send_buf;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &ctx->initial_md;
	ops[4].op = GRPC_OP_RECV_MESSAGE;
	ops[4].data.recv_message.recv_message = &ctx->recv_buf;
	ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[5].data.recv_status_on_client.trailing_metadata = &ctx->trailing_md;
	ops[5].data.recv_status_on_client.status = &ctx->status;
	ops[5].data.recv_status_on_client.status_details = &ctx->details;

	return grpc_call_start_batch(ctx->call, ops, sizeof(ops) / sizeof(ops[0]), ctx->tag, NULL);
}


static enum wait_result call_wait(struct policy_client *client, struct call_ctx *ctx,
		gpr_timespec deadline, int *success)
{
	grpc_event ev;

	ev = grpc_completion_queue_pluck(client->cq, ctx->tag,
			time_after_ms(deadline, PLUCK_MARGIN_MS), NULL);
	if(ev.type == GRPC_OP_COMPLETE){
		*success = ev.success;
		return WAIT_DONE;
	}
	/* gRPC did not end the call by its own deadline: cancel, then reap the
	 * batch so nothing it references is freed while still in use. */
	(void)grpc_call_cancel(ctx->call, NULL);
	ev = grpc_completion_queue_pluck(client->cq, ctx->tag, now_after_ms(REAP_WAIT_MS), NULL);
	if(ev.type == GRPC_OP_COMPLETE){
		return WAIT_CANCELLED;
	}
	return WAIT_ABANDONED;
}


/* ------------------------------------------------------------- response */

/* Scopes sent ahead that fit; anything odd (another access, empty, too long) is left out. */
static void apply_grants(Policyd__V1__ScopeGrant *const *grants, size_t n, struct policy_grants *out)
{
	size_t i, used = 0;

	out->n = 0;
	for(i = 0; i < n && out->n < POLICY_MORE_SCOPES_MAX; i++){
		const Policyd__V1__ScopeGrant *g = grants[i];
		struct policy_scope_grant *kept = &out->grant[out->n];

		if(g == NULL || (g->access != POLICYD__V1__ACCESS__ACCESS_READ && g->access != POLICYD__V1__ACCESS__ACCESS_WRITE
					&& g->access != POLICYD__V1__ACCESS__ACCESS_SUBSCRIBE)
				|| g->scope.len == 0 || g->scope.len > POLICY_SCOPE_MAX
				|| g->scope.len > sizeof(out->text) - used){
			continue;
		}
		memcpy(out->text + used, g->scope.data, g->scope.len);
		kept->access = (enum policy_access)g->access;
		kept->offset = (uint16_t)used;
		kept->len = (uint16_t)g->scope.len;
		used += g->scope.len;
		out->n++;
	}
}


static void apply_response(const Policyd__V1__CheckAclResponse *resp, struct policy_check_result *result)
{
	char detail[48];

	switch(resp->result){
		case POLICYD__V1__RESULT__RESULT_ALLOW:
			result->outcome = POLICY_ALLOW;
			break;
		case POLICYD__V1__RESULT__RESULT_DENY:
			result->outcome = POLICY_DENY;
			break;
		default:
			snprintf(detail, sizeof(detail), "unexpected result value %d", (int)resp->result);
			result_error(result, POLICY_ERR_PROTOCOL, GRPC_STATUS_OK, detail);
			return;
	}
	result->error = POLICY_ERR_NONE;
	result->grpc_status = GRPC_STATUS_OK;
	result->generation = resp->generation;
	result->cache_ttl_ms = resp->cache_ttl_ms;
	result->disconnect = resp->disconnect;
	if(resp->rule){
		copy_bytes(result->rule, sizeof(result->rule), resp->rule, strlen(resp->rule));
	}
	if(resp->cache_scope.len > 0 && resp->cache_scope.len <= sizeof(result->cache_scope)){
		memcpy(result->cache_scope, resp->cache_scope.data, resp->cache_scope.len);
		result->cache_scope_len = resp->cache_scope.len;
	}
	if(!resp->disconnect){
		apply_grants(resp->more_scopes, resp->n_more_scopes, &result->more);
	}
}


/* Pure (no gRPC state): fuzz/ drives it with arbitrary bytes. */
void policy_response_decode(const uint8_t *data, size_t len, struct policy_check_result *result)
{
	Policyd__V1__CheckAclResponse *resp;

	result_init(result);  /* every field defined by the bytes alone */
	resp = policyd__v1__check_acl_response__unpack(NULL, len, data);
	if(resp == NULL){
		result_error(result, POLICY_ERR_PROTOCOL, GRPC_STATUS_OK, "cannot decode CheckAclResponse");
		return;
	}
	apply_response(resp, result);
	policyd__v1__check_acl_response__free_unpacked(resp, NULL);
}


static void decode_response(grpc_byte_buffer *buf, struct policy_check_result *result)
{
	grpc_byte_buffer_reader reader;
	grpc_slice flat;

	/* The reader decompresses a compressed buffer if need be. */
	if(!grpc_byte_buffer_reader_init(&reader, buf)){
		result_error(result, POLICY_ERR_PROTOCOL, GRPC_STATUS_OK, "cannot read response message");
		return;
	}
	flat = grpc_byte_buffer_reader_readall(&reader);
	grpc_byte_buffer_reader_destroy(&reader);
	policy_response_decode(GRPC_SLICE_START_PTR(flat), GRPC_SLICE_LENGTH(flat), result);
	grpc_slice_unref(flat);
}


static void status_error(const struct call_ctx *ctx, struct policy_check_result *result)
{
	enum policy_error error;
	char text[POLICY_DETAIL_MAX];
	char detail[POLICY_DETAIL_MAX + 32];

	switch(ctx->status){
		case GRPC_STATUS_UNAVAILABLE:
			error = POLICY_ERR_UNAVAILABLE;
			break;
		case GRPC_STATUS_DEADLINE_EXCEEDED:
			error = POLICY_ERR_DEADLINE;
			break;
		default:
			error = POLICY_ERR_STATUS;
			break;
	}
	copy_bytes(text, sizeof(text), GRPC_SLICE_START_PTR(ctx->details), GRPC_SLICE_LENGTH(ctx->details));
	snprintf(detail, sizeof(detail), "%s%s%s", status_name(ctx->status), text[0] ? ": " : "", text);
	result_error(result, error, (int)ctx->status, detail);
}


/* The response message of a completed call, taken out of ctx; or NULL with
 * *status describing why there is none. */
static grpc_byte_buffer *call_take_response(struct call_ctx *ctx, int success, struct policy_check_result *status)
{
	grpc_byte_buffer *buf;

	if(ctx->status != GRPC_STATUS_OK){
		status_error(ctx, status);
	}else if(!success){
		result_error(status, POLICY_ERR_INTERNAL, GRPC_STATUS_OK, "gRPC batch failed");
	}else if(ctx->recv_buf == NULL){
		result_error(status, POLICY_ERR_PROTOCOL, GRPC_STATUS_OK, "OK status without a response message");
	}else{
		buf = ctx->recv_buf;
		ctx->recv_buf = NULL;
		return buf;
	}
	return NULL;
}


static void maybe_reset_backoff(struct policy_client *client, const struct policy_check_result *result)
{
	gpr_timespec now;

	if(result->outcome != POLICY_ERROR || result->error != POLICY_ERR_UNAVAILABLE){
		return;
	}
	now = gpr_now(GPR_CLOCK_MONOTONIC);
	if(gpr_time_cmp(now, time_after_ms(client->last_backoff_reset, BACKOFF_RESET_INTERVAL_MS)) < 0){
		return;
	}
	client->last_backoff_reset = now;
	grpc_channel_reset_connect_backoff(client->channel);
}


static void *call_tag(struct policy_client *client)
{
	/* Tags are opaque to gRPC; a fresh one per call means a stale event
	 * can never be mistaken for the current call's. */
	client->next_tag += 2;
	if(client->next_tag == 0){
		client->next_tag = 1;
	}
	return (void *)client->next_tag;
}


/* One unary call on the main thread's queue, bounded by timeout_ms (plus a
 * small margin). Takes send_buf. Returns the response message (the caller
 * destroys it), or NULL with *status describing the error. */
static grpc_byte_buffer *unary_call(struct policy_client *client, grpc_slice method,
		grpc_byte_buffer *send_buf, struct policy_check_result *status)
{
	grpc_byte_buffer *response = NULL;
	struct call_ctx *ctx;
	gpr_timespec deadline;
	int success = 0;

	ctx = call_ctx_new();
	if(ctx == NULL){
		grpc_byte_buffer_destroy(send_buf);
		result_error(status, POLICY_ERR_INTERNAL, 0, "out of memory");
		return NULL;
	}
	ctx->send_buf = send_buf;
	deadline = now_after_ms(client->timeout_ms);
	ctx->call = grpc_channel_create_call(client->channel, NULL, GRPC_PROPAGATE_DEFAULTS,
			client->cq, method, NULL, deadline, NULL);
	if(ctx->call == NULL){
		result_error(status, POLICY_ERR_INTERNAL, 0, "cannot create gRPC call");
		call_ctx_free(ctx);
		return NULL;
	}
	ctx->tag = call_tag(client);
	if(call_start(ctx) != GRPC_CALL_OK){
		result_error(status, POLICY_ERR_INTERNAL, 0, "cannot start gRPC call");
		call_ctx_free(ctx);
		return NULL;
	}
	switch(call_wait(client, ctx, deadline, &success)){
		case WAIT_DONE:
			response = call_take_response(ctx, success, status);
			break;
		case WAIT_CANCELLED:
			result_error(status, POLICY_ERR_DEADLINE, GRPC_STATUS_DEADLINE_EXCEEDED,
					"no completion by the deadline; call cancelled");
			break;
		case WAIT_ABANDONED:
			/* Still a deadline miss: it feeds the breaker like one. */
			result_error(status, POLICY_ERR_DEADLINE, GRPC_STATUS_DEADLINE_EXCEEDED,
					"call did not complete after cancel; abandoned");
			client->abandoned++;
			return NULL; /* ctx deliberately leaked: gRPC may still write into it */
	}
	maybe_reset_backoff(client, status);
	call_ctx_free(ctx);
	return response;
}


void policy_client_check(struct policy_client *client,
		const struct policy_check_request *request,
		struct policy_check_result *result)
{
	grpc_byte_buffer *send_buf;
	grpc_byte_buffer *response;

	result_init(result);
	if(client == NULL || request == NULL){
		result_error(result, POLICY_ERR_INTERNAL, 0, "no client");
		return;
	}
	send_buf = encode_request(request);
	if(send_buf == NULL){
		result_error(result, POLICY_ERR_INTERNAL, 0, "cannot encode CheckAclRequest");
		return;
	}
	response = unary_call(client, client->method, send_buf, result);
	if(response != NULL){
		decode_response(response, result);
		grpc_byte_buffer_destroy(response);
	}
}


/* ---------------------------------------------------------- Authenticate */

static grpc_byte_buffer *encode_auth_request(const struct policy_auth_request *req)
{
	Policyd__V1__AuthenticateRequest msg = POLICYD__V1__AUTHENTICATE_REQUEST__INIT;
	msg.client_id.data = (uint8_t *)req->client_id;
	msg.client_id.len = req->client_id ? req->client_id_len : 0;
	msg.has_username = req->username != NULL;
	msg.username.data = (uint8_t *)req->username;
	msg.username.len = req->username ? req->username_len : 0;
	msg.has_password = req->has_password != 0;
	msg.password.data = (uint8_t *)req->password;
	msg.password.len = req->password ? req->password_len : 0;
	msg.certificate_der.data = (uint8_t *)req->certificate_der;
	msg.certificate_der.len = req->certificate_der ? req->certificate_der_len : 0;
	msg.peer_address = (char *)(req->peer_address ? req->peer_address : "");
	msg.want_scopes = req->want_scopes;

	return pack_message(&msg.base);
}


static void auth_error(struct policy_auth_result *result, const struct policy_check_result *status)
{
	result->outcome = POLICY_ERROR;
	result->error = status->error;
	result->grpc_status = status->grpc_status;
	copy_bytes(result->detail, sizeof(result->detail), status->detail, strlen(status->detail));
}


static void apply_auth_response(const Policyd__V1__AuthenticateResponse *resp, struct policy_auth_result *result)
{
	if(resp->reason){
		copy_bytes(result->detail, sizeof(result->detail), resp->reason, strlen(resp->reason));
	}
	result->generation = resp->generation;
	result->error = POLICY_ERR_NONE;
	if(resp->result == POLICYD__V1__RESULT__RESULT_DENY){
		result->outcome = POLICY_DENY;
	}else if(resp->result != POLICYD__V1__RESULT__RESULT_ALLOW){
		result->outcome = POLICY_ERROR;
		result->error = POLICY_ERR_PROTOCOL;
		snprintf(result->detail, sizeof(result->detail), "unexpected result value %d", (int)resp->result);
	}else if(resp->username.len == 0 || resp->username.len >= sizeof(result->username)
			|| memchr(resp->username.data, '\0', resp->username.len) != NULL){
		/* An allow must name a usable identity; anything else is a broken answer. */
		result->outcome = POLICY_ERROR;
		result->error = POLICY_ERR_PROTOCOL;
		snprintf(result->detail, sizeof(result->detail), "allow without a usable identity (%zu bytes)",
				resp->username.len);
	}else{
		memcpy(result->username, resp->username.data, resp->username.len);
		result->username[resp->username.len] = '\0';
		result->outcome = POLICY_ALLOW;
		result->cache_ttl_ms = resp->cache_ttl_ms;
		apply_grants(resp->scopes, resp->n_scopes, &result->scopes);
	}
}


static void decode_auth_response(grpc_byte_buffer *buf, struct policy_auth_result *result)
{
	Policyd__V1__AuthenticateResponse *resp;
	grpc_byte_buffer_reader reader;
	grpc_slice flat;

	result->outcome = POLICY_ERROR;
	result->error = POLICY_ERR_PROTOCOL;
	if(!grpc_byte_buffer_reader_init(&reader, buf)){
		snprintf(result->detail, sizeof(result->detail), "cannot read response message");
		return;
	}
	flat = grpc_byte_buffer_reader_readall(&reader);
	grpc_byte_buffer_reader_destroy(&reader);
	resp = policyd__v1__authenticate_response__unpack(NULL, GRPC_SLICE_LENGTH(flat), GRPC_SLICE_START_PTR(flat));
	grpc_slice_unref(flat);
	if(resp == NULL){
		snprintf(result->detail, sizeof(result->detail), "cannot decode AuthenticateResponse");
		return;
	}
	apply_auth_response(resp, result);
	policyd__v1__authenticate_response__free_unpacked(resp, NULL);
}


void policy_client_authenticate(struct policy_client *client,
		const struct policy_auth_request *request,
		struct policy_auth_result *result)
{
	struct policy_check_result status;
	grpc_byte_buffer *send_buf;
	grpc_byte_buffer *response;

	memset(result, 0, sizeof(*result));
	result_init(&status);
	if(client == NULL || request == NULL){
		result_error(&status, POLICY_ERR_INTERNAL, 0, "no client");
		auth_error(result, &status);
		return;
	}
	send_buf = encode_auth_request(request);
	if(send_buf == NULL){
		result_error(&status, POLICY_ERR_INTERNAL, 0, "cannot encode AuthenticateRequest");
		auth_error(result, &status);
		return;
	}
	response = unary_call(client, client->auth_method, send_buf, &status);
	if(response == NULL){
		auth_error(result, &status);
		return;
	}
	decode_auth_response(response, result);
	grpc_byte_buffer_destroy(response);
}


/* ----------------------------------------------------------- ReportStats */

static grpc_byte_buffer *encode_stats(const struct policy_shim_stats *st)
{
	Policyd__V1__ShimStats msg = POLICYD__V1__SHIM_STATS__INIT;
	msg.broker_id = (char *)(st->broker_id ? st->broker_id : "");
	msg.checks = st->checks;
	msg.allowed = st->allowed;
	msg.denied = st->denied;
	msg.errors = st->errors;
	msg.cache_hits = st->cache_hits;
	msg.cache_misses = st->cache_misses;
	msg.cache_entries = st->cache_entries;
	msg.cache_bytes = st->cache_bytes;
	msg.stale_served = st->stale_served;
	msg.breaker_opens = st->breaker_opens;
	msg.breaker_open = st->breaker_open != 0;
	msg.tick_missing = st->tick_missing != 0;
	/* protobuf-c only reads the arrays while packing. */
	msg.n_miss_round_trip_bounds_us = st->n_round_trip_bounds;
	msg.miss_round_trip_bounds_us = (uint32_t *)st->round_trip_bounds_us;
	msg.n_miss_round_trip_counts = st->round_trip_counts ? st->n_round_trip_bounds + 1 : 0;
	msg.miss_round_trip_counts = (uint64_t *)st->round_trip_counts;
	msg.miss_round_trip_sum_us = st->round_trip_sum_us;

	return pack_message(&msg.base);
}


/* Called with client->lock held. */
static int stats_call_start(struct policy_client *client, struct call_ctx *ctx)
{
	ctx->call = grpc_channel_create_call(client->channel, NULL, GRPC_PROPAGATE_DEFAULTS,
			client->watch_cq, client->stats_method, NULL,
			now_after_ms(REPORT_STATS_TIMEOUT_MS), NULL);
	if(ctx->call == NULL){
		return -1;
	}
	ctx->tag = ctx; /* the watcher tells it from its own tag (the client) */
	return call_start(ctx) == GRPC_CALL_OK ? 0 : -1;
}


int policy_client_report_stats(struct policy_client *client, const struct policy_shim_stats *stats)
{
	struct call_ctx *ctx;
	int rc = -1;

	if(client == NULL || stats == NULL || !client->watcher_running){
		return -1;
	}
	ctx = call_ctx_new();
	if(ctx == NULL){
		return -1;
	}
	ctx->send_buf = encode_stats(stats);
	pthread_mutex_lock(&client->lock);
	if(ctx->send_buf && client->stats_call == NULL && !client->stopping){
		rc = stats_call_start(client, ctx);
		if(rc == 0){
			client->stats_call = ctx;
		}
	}
	pthread_mutex_unlock(&client->lock);
	if(rc != 0){
		call_ctx_free(ctx);
	}
	return rc;
}
