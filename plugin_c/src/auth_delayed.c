/*
 * Delayed basic auth on Mosquitto 2.1 (see auth_delayed.h).
 *
 * Jobs live in one array of AUTH_DELAYED_MAX slots: FREE -> QUEUED (main
 * thread) -> ASKING (a worker) -> ANSWERED (the worker) -> FREE (the tick).
 * One mutex guards the slots; the gRPC call runs outside it.
 *
 * No answer (daemon restarting, hung, unreachable): the worker asks again
 * every AUTH_DELAYED_RETRY_MS for up to AUTH_DELAYED_RETRY_WINDOW_MS, so a
 * daemon restart delays a CONNECT instead of refusing it. After that the
 * connection is closed without CONNACK: 2.1 can complete a delayed CONNECT
 * only with success or "not authorized" (final for many device SDKs). It is
 * closed, not left waiting: a waiting CONNECT holds its client id (2.1
 * refuses any other CONNECT with it) and no keepalive runs before CONNACK,
 * so a peer that vanished, or a hostile one, would hold it for good.
 *
 * While it waits, the client's username is a marker naming its job (no
 * identity yet, and a handle: the broker's kick by username finds a waiting
 * CONNECT, which nothing else in its API reaches, and a completion is
 * claimed only by the client carrying its job's marker).
 */
#include <inttypes.h>
#include <pthread.h>
#include <time.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "auth.h"
#include "auth_delayed.h"
#include "broker_compat.h"
#include "logging.h"
#include "plugin_state.h"

#define AUTH_DELAYED_MAX 256          /* CONNECTs waiting at once; more are refused */
#define AUTH_DELAYED_WORKERS 4        /* Authenticate calls in flight at once */
#define AUTH_DELAYED_DER_MAX 16384    /* a larger client certificate is refused */
#define AUTH_DELAYED_RETRY_MS 200
#define AUTH_DELAYED_RETRY_WINDOW_MS 2000  /* bridges a daemon restart */
/* MOSQ_ERR_SERVER_BUSY of 2.1's headers: CONNACK 0x89 to an MQTT 5 client. */
#define AUTH_RC_SERVER_BUSY 137
/* U+E000 (private use) first: no identity policyd names starts with it. */
#define AUTH_MARKER_FMT "\xee\x80\x80policyd waiting %" PRIu64
#define AUTH_MARKER_LEN 48

enum job_state { JOB_FREE, JOB_QUEUED, JOB_ASKING, JOB_ANSWERED };

struct auth_job {
	enum job_state state;
	bool superseded;                  /* a newer CONNECT took this client id */
	uint64_t seq;                     /* queue order */
	int64_t queued_ms;                /* when BASIC_AUTH queued it */
	int64_t not_before_ms;            /* asked again no sooner than this */
	uintptr_t client_addr;            /* compared, never dereferenced: the client may be gone */
	char *client_id;
	char *username;
	char *password;
	char *peer_address;
	unsigned char *der;
	size_t der_len;
	bool has_password;
	bool want_scopes;
	char marker[AUTH_MARKER_LEN];     /* the client's username while it waits */
	struct policy_auth_result result;
};

struct worker_arg {
	struct auth_delayed *ad;
	size_t index;
};

struct auth_delayed {
	pthread_mutex_t lock;
	pthread_cond_t work;              /* a job was queued, or stopping */
	bool stopping;
	uint64_t next_seq;
	size_t waiting;                   /* slots not FREE */
	struct auth_job jobs[AUTH_DELAYED_MAX];
	pthread_t threads[AUTH_DELAYED_WORKERS];
	struct worker_arg worker_args[AUTH_DELAYED_WORKERS];
	struct policy_client *clients[AUTH_DELAYED_WORKERS];
	size_t started;
	struct auth_delayed_stats stats;  /* under lock */
	/* Main thread only: the answer being handed to the broker right now. */
	const char *completing_id;
	uintptr_t completing_addr;
	const char *completing_marker;
	const struct policy_auth_result *completing_result;  /* its username: the identity */
	bool completing_by_password;
	bool completing_claimed;
	struct log_limiter overflow_log;
	uint64_t next_marker;
};


static void job_clear(struct auth_job *job)
{
	free(job->client_id);
	free(job->username);
	if(job->password != NULL){
		explicit_bzero(job->password, strlen(job->password));
		free(job->password);
	}
	free(job->peer_address);
	free(job->der);
	memset(job, 0, sizeof(*job));
}


/* The oldest queued job due now, or NULL with *next_due_ms the soonest time
 * a retry falls due (INT64_MAX: none). Called with the lock held. */
static struct auth_job *job_next_queued(struct auth_delayed *ad, int64_t now_ms, int64_t *next_due_ms)
{
	struct auth_job *best = NULL, *job;
	size_t i;

	*next_due_ms = INT64_MAX;
	for(i = 0; i < AUTH_DELAYED_MAX; i++){
		job = &ad->jobs[i];
		if(job->state != JOB_QUEUED){
			continue;
		}
		if(job->not_before_ms > now_ms){
			if(job->not_before_ms < *next_due_ms){
				*next_due_ms = job->not_before_ms;
			}
		}else if(best == NULL || job->seq < best->seq){
			best = job;
		}
	}
	return best;
}


/* Asked again later: no answer came, and the client may still be waiting. */
static bool job_retries(const struct auth_job *job, const struct policy_auth_result *res, int64_t now_ms)
{
	return res->outcome == POLICY_ERROR
		&& (res->error == POLICY_ERR_UNAVAILABLE || res->error == POLICY_ERR_DEADLINE)
		&& !job->superseded
		&& now_ms + AUTH_DELAYED_RETRY_MS - job->queued_ms < AUTH_DELAYED_RETRY_WINDOW_MS;
}


/* Waits for work, or until a retry falls due. Called with the lock held. */
static void worker_wait(struct auth_delayed *ad, int64_t due_ms)
{
	struct timespec ts;

	if(due_ms == INT64_MAX){
		pthread_cond_wait(&ad->work, &ad->lock);
		return;
	}
	due_ms -= monotonic_ms();
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)(due_ms / 1000);
	ts.tv_nsec += (long)(due_ms % 1000) * 1000000L;
	if(ts.tv_nsec >= 1000000000L){
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	(void)pthread_cond_timedwait(&ad->work, &ad->lock, &ts);
}


static void job_request(const struct auth_job *job, struct policy_auth_request *req)
{
	memset(req, 0, sizeof(*req));
	req->client_id = job->client_id;
	req->client_id_len = job->client_id ? strlen(job->client_id) : 0;
	req->username = job->username;
	req->username_len = job->username ? strlen(job->username) : 0;
	req->has_password = job->has_password;
	req->password = job->password;
	req->password_len = job->password ? strlen(job->password) : 0;
	req->certificate_der = job->der;
	req->certificate_der_len = job->der_len;
	req->peer_address = job->peer_address;
	req->want_scopes = job->want_scopes;
}


static void *worker_run(void *arg)
{
	struct worker_arg *wa = arg;
	struct auth_delayed *ad = wa->ad;
	struct policy_client *client = ad->clients[wa->index];
	struct policy_auth_request req;
	struct policy_auth_result res;
	struct auth_job *job;
	int64_t now_ms, due_ms;

	pthread_mutex_lock(&ad->lock);
	while(!ad->stopping){
		job = job_next_queued(ad, monotonic_ms(), &due_ms);
		if(job == NULL){
			worker_wait(ad, due_ms);
			continue;
		}
		job->state = JOB_ASKING;
		job_request(job, &req);   /* the job's strings stay put while it is ASKING */
		pthread_mutex_unlock(&ad->lock);
		policy_client_authenticate(client, &req, &res);
		pthread_mutex_lock(&ad->lock);
		now_ms = monotonic_ms();
		if(job_retries(job, &res, now_ms) && !ad->stopping){
			job->not_before_ms = now_ms + AUTH_DELAYED_RETRY_MS;
			job->state = JOB_QUEUED;
			ad->stats.retried++;
			continue;
		}
		job->result = res;
		job->state = JOB_ANSWERED;
	}
	pthread_mutex_unlock(&ad->lock);
	return NULL;
}


struct auth_delayed *auth_delayed_create(const struct policy_client_options *opts, const char **errmsg)
{
	struct auth_delayed *ad = calloc(1, sizeof(*ad));
	pthread_condattr_t cond_attr;
	size_t i;

	if(ad == NULL){
		*errmsg = "out of memory";
		return NULL;
	}
	pthread_mutex_init(&ad->lock, NULL);
	/* Retries are timed by monotonic_ms(): the same clock for the waits. */
	pthread_condattr_init(&cond_attr);
	pthread_condattr_setclock(&cond_attr, CLOCK_MONOTONIC);
	pthread_cond_init(&ad->work, &cond_attr);
	pthread_condattr_destroy(&cond_attr);
	log_limiter_init(&ad->overflow_log, 1);
	for(i = 0; i < AUTH_DELAYED_WORKERS; i++){
		ad->clients[i] = policy_client_create(opts, errmsg);
		if(ad->clients[i] == NULL){
			auth_delayed_destroy(ad);
			return NULL;
		}
		ad->worker_args[i].ad = ad;
		ad->worker_args[i].index = i;
		if(pthread_create(&ad->threads[i], NULL, worker_run, &ad->worker_args[i]) != 0){
			*errmsg = "cannot start a CONNECT worker thread";
			auth_delayed_destroy(ad);
			return NULL;
		}
		ad->started++;
	}
	return ad;
}


void auth_delayed_destroy(struct auth_delayed *ad)
{
	size_t i;

	if(ad == NULL){
		return;
	}
	pthread_mutex_lock(&ad->lock);
	ad->stopping = true;
	pthread_cond_broadcast(&ad->work);
	pthread_mutex_unlock(&ad->lock);
	for(i = 0; i < ad->started; i++){
		pthread_join(ad->threads[i], NULL);
	}
	for(i = 0; i < AUTH_DELAYED_WORKERS; i++){
		policy_client_destroy(ad->clients[i]);
	}
	for(i = 0; i < AUTH_DELAYED_MAX; i++){
		job_clear(&ad->jobs[i]);
	}
	pthread_cond_destroy(&ad->work);
	pthread_mutex_destroy(&ad->lock);
	free(ad);
}


static char *dup_or_null(const char *s, size_t len, bool *failed)
{
	char *copy;

	if(s == NULL){
		return NULL;
	}
	copy = malloc(len + 1);
	if(copy == NULL){
		*failed = true;
		return NULL;
	}
	memcpy(copy, s, len);
	copy[len] = '\0';
	return copy;
}


/* Copies the request into a free slot; false when none is free or memory is short. */
static bool job_fill(struct auth_job *job, const struct policy_auth_request *req)
{
	bool failed = false;

	job->client_id = dup_or_null(req->client_id, req->client_id_len, &failed);
	job->username = dup_or_null(req->username, req->username_len, &failed);
	job->password = dup_or_null(req->password, req->password_len, &failed);
	job->peer_address = req->peer_address ? dup_or_null(req->peer_address, strlen(req->peer_address), &failed) : NULL;
	job->has_password = req->has_password;
	job->want_scopes = req->want_scopes;
	if(req->certificate_der != NULL){
		job->der = malloc(req->certificate_der_len);
		if(job->der == NULL){
			failed = true;
		}else{
			memcpy(job->der, req->certificate_der, req->certificate_der_len);
			job->der_len = req->certificate_der_len;
		}
	}
	return !failed && job->client_id != NULL;
}


/* Until policyd names it, the client has no identity: nothing the broker
 * does for it before the completion may use the username it sent. After
 * job_fill(): the request's username is the client's, freed here. */
static bool job_mark(struct auth_delayed *ad, struct auth_job *job, struct mosquitto *client)
{
	snprintf(job->marker, sizeof(job->marker), AUTH_MARKER_FMT, ad->next_marker++);
	return mosquitto_set_username(client, job->marker) == MOSQ_ERR_SUCCESS;
}


int auth_delayed_begin(struct auth_delayed *ad, struct mosquitto *client, const struct policy_auth_request *req)
{
	struct auth_job *slot = NULL;
	size_t i;

	if(req->client_id == NULL || req->client_id_len == 0 || req->certificate_der_len > AUTH_DELAYED_DER_MAX){
		return MOSQ_ERR_AUTH;
	}
	pthread_mutex_lock(&ad->lock);
	for(i = 0; i < AUTH_DELAYED_MAX; i++){
		struct auth_job *job = &ad->jobs[i];

		if(job->state == JOB_FREE){
			if(slot == NULL){
				slot = job;
			}
		}else if(!job->superseded && strcmp(job->client_id, req->client_id) == 0){
			/* 2.1 refuses a second CONNECT while one with this id waits, so the
			 * older one is gone: its answer must never reach this one. */
			ad->stats.superseded++;
			if(job->state == JOB_QUEUED){
				job_clear(job);   /* not asked yet: not worth asking */
				ad->waiting--;
				if(slot == NULL){
					slot = job;
				}
			}else{
				job->superseded = true;
			}
		}
	}
	if(slot == NULL || !job_fill(slot, req) || !job_mark(ad, slot, client)){
		if(slot != NULL){
			job_clear(slot);
		}
		ad->stats.overflow++;
		pthread_mutex_unlock(&ad->lock);
		if(log_limiter_admit(&ad->overflow_log)){
			plog_admitted(&ad->overflow_log, MOSQ_LOG_WARNING, "CONNECT refused as retryable: %d CONNECTs "
					"already wait for policyd (or out of memory)", AUTH_DELAYED_MAX);
		}
		/* Busy, not forbidden: CONNACK 0x89 to MQTT 5, no CONNACK to MQTT 3. */
		return mosquitto_client_protocol_version(client) == 5 ? AUTH_RC_SERVER_BUSY : MOSQ_ERR_UNKNOWN;
	}
	slot->seq = ad->next_seq++;
	slot->queued_ms = monotonic_ms();
	slot->not_before_ms = 0;
	slot->client_addr = (uintptr_t)client;
	slot->state = JOB_QUEUED;
	ad->waiting++;
	ad->stats.queued++;
	pthread_cond_signal(&ad->work);
	pthread_mutex_unlock(&ad->lock);
	return MOSQ_ERR_AUTH_DELAYED;
}


/* Hands one answer to the broker. The identity is set by auth_delayed_claim()
 * from inside the broker's call, on the pointer it passes to our callbacks. */
static void auth_delayed_complete(struct policyd_plugin *plugin, struct auth_job *job)
{
	struct auth_delayed *ad = plugin->auth_delayed;
	broker_complete_basic_auth_fn complete = broker_complete_basic_auth();
	int rc = auth_outcome(plugin, job->client_id, &job->result);  /* counts and logs a refusal */

	if(job->result.outcome == POLICY_ERROR){
		ad->stats.unanswered++;   /* closed without CONNACK: see the top */
		(void)mosquitto_kick_client_by_username(job->marker, false);
		return;
	}
	if(rc != MOSQ_ERR_SUCCESS){
		complete(job->client_id, rc);
		return;
	}
	ad->completing_id = job->client_id;
	ad->completing_addr = job->client_addr;
	ad->completing_marker = job->marker;
	ad->completing_result = &job->result;
	ad->completing_by_password = job->der == NULL;
	ad->completing_claimed = false;
	complete(job->client_id, MOSQ_ERR_SUCCESS);
	if(!ad->completing_claimed){
		/* Gone while it waited (the broker found no such CONNECT), or its
		 * CONNACK failed: either way no client runs with this answer. */
		plog(MOSQ_LOG_DEBUG, "CONNECT answered after its client had gone");
	}
	ad->completing_id = NULL;
	ad->completing_marker = NULL;
	ad->completing_result = NULL;
}


void auth_delayed_on_tick(struct policyd_plugin *plugin)
{
	struct auth_delayed *ad = plugin->auth_delayed;
	struct auth_job *job;
	size_t i;

	if(ad == NULL){
		return;
	}
	for(i = 0; i < AUTH_DELAYED_MAX; i++){
		job = &ad->jobs[i];
		pthread_mutex_lock(&ad->lock);
		if(job->state != JOB_ANSWERED){
			pthread_mutex_unlock(&ad->lock);
			continue;
		}
		ad->stats.completed += job->superseded ? 0 : 1;
		pthread_mutex_unlock(&ad->lock);
		/* ANSWERED slots belong to the main thread: no worker touches them. */
		if(!job->superseded){
			auth_delayed_complete(plugin, job);
		}
		pthread_mutex_lock(&ad->lock);
		job_clear(job);
		ad->waiting--;
		pthread_mutex_unlock(&ad->lock);
	}
}


void auth_delayed_claim(struct policyd_plugin *plugin, struct mosquitto *client)
{
	struct auth_delayed *ad = plugin->auth_delayed;
	const char *id, *username;

	/* The client that sent this CONNECT, not another one with its id (a
	 * session it takes over, whose will the broker checks meanwhile). */
	if(ad == NULL || ad->completing_id == NULL || ad->completing_claimed || client == NULL
			|| (uintptr_t)client != ad->completing_addr){
		return;
	}
	id = mosquitto_client_id(client);
	username = mosquitto_client_username(client);
	if(id == NULL || strcmp(id, ad->completing_id) != 0 || username == NULL
			|| strcmp(username, ad->completing_marker) != 0){
		return;
	}
	ad->completing_claimed = true;
	auth_set_identity(plugin, client, id, ad->completing_result, ad->completing_by_password);
}


bool auth_delayed_waiting(const struct auth_delayed *ad)
{
	size_t waiting;

	if(ad == NULL){
		return false;
	}
	pthread_mutex_lock((pthread_mutex_t *)&ad->lock);
	waiting = ad->waiting;
	pthread_mutex_unlock((pthread_mutex_t *)&ad->lock);
	return waiting > 0;
}


void auth_delayed_get_stats(const struct auth_delayed *ad, struct auth_delayed_stats *out)
{
	memset(out, 0, sizeof(*out));
	if(ad == NULL){
		return;
	}
	pthread_mutex_lock((pthread_mutex_t *)&ad->lock);
	*out = ad->stats;
	pthread_mutex_unlock((pthread_mutex_t *)&ad->lock);
}
