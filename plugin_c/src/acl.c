/*
 * The ACL check: cache first, then (breaker permitting) the daemon, and on
 * any failure deny, or with on_error stale an expired cached answer of the
 * policy generation in force. Runs on the broker's main thread only.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "acl.h"
#include "broker_compat.h"
#include "conn.h"
#include "plugin_state.h"
#include "stats.h"
#include "topic_match.h"

/* Lines per LOG_LIMIT_WINDOW_MS. */
#define ERROR_LOG_BURST 1
#define DENIED_LOG_BURST 20
#define REJECTED_LOG_BURST 1
#define RECOVERED_LOG_BURST 1
#define STALE_LOG_BURST 1
#define BREAKER_LOG_BURST 2
/* Cached answers expire up to this fraction (1/N) early, so entries stored
 * together do not all expire, and go back to the daemon, together. */
#define TTL_JITTER_DIVISOR 10
/* Cache entries a TICK looks at for expiry: a bounded slice of the broker's
 * loop (a visit is a comparison; a free is a few pointer updates). */
#define SWEEP_VISITS_PER_TICK 1024
/* After a full pass the next waits this long: expired entries are never
 * served and the byte budget bounds them, so the sweep only returns memory
 * early, and walking a small cache at every TICK would cost every message. */
#define SWEEP_PASS_PAUSE_MS 1000
/* The broker sends TICK every pass of its loop (about every 100 ms when
 * idle); none for this long while checks arrive means none will come. */
#define TICK_EXPECTED_WITHIN_MS 5000
#define TICK_MISSING_LOG_BURST 1

/* The request as the broker gave it, plus log-safe renderings made only
 * when a line is actually logged. */
struct acl_subject {
	struct policy_check_request request;
	struct mosquitto *client;
	int mosq_access;
	char username[LOG_IDENT_MAX];
	char client_id[LOG_IDENT_MAX];
	char topic[LOG_TOPIC_MAX];
};


void acl_limiters_init(struct policyd_plugin *plugin)
{
	int i;

	for(i = 0; i < POLICY_ERR__COUNT; i++){
		log_limiter_init(&plugin->limiters.errors[i], ERROR_LOG_BURST);
	}
	log_limiter_init(&plugin->limiters.denied, DENIED_LOG_BURST);
	log_limiter_init(&plugin->limiters.rejected, REJECTED_LOG_BURST);
	log_limiter_init(&plugin->limiters.recovered, RECOVERED_LOG_BURST);
	log_limiter_init(&plugin->limiters.stale, STALE_LOG_BURST);
	log_limiter_init(&plugin->limiters.breaker, BREAKER_LOG_BURST);
	log_limiter_init(&plugin->tick_log, TICK_MISSING_LOG_BURST);
}


static const char *access_name(int access)
{
	switch(access){
		case MOSQ_ACL_READ: return "read";
		case MOSQ_ACL_WRITE: return "write";
		case MOSQ_ACL_SUBSCRIBE: return "subscribe";
		case MOSQ_ACL_UNSUBSCRIBE: return "unsubscribe";
	}
	return "unknown-access";
}


static bool access_to_policy(int access, enum policy_access *out)
{
	switch(access){
		case MOSQ_ACL_READ: *out = POLICY_ACCESS_READ; return true;
		case MOSQ_ACL_WRITE: *out = POLICY_ACCESS_WRITE; return true;
		case MOSQ_ACL_SUBSCRIBE: *out = POLICY_ACCESS_SUBSCRIBE; return true;
		case MOSQ_ACL_UNSUBSCRIBE: *out = POLICY_ACCESS_UNSUBSCRIBE; return true;
	}
	return false;
}


static void subject_render(struct acl_subject *s)
{
	const struct policy_check_request *r = &s->request;

	if(r->username){
		log_sanitize(s->username, sizeof(s->username), r->username, r->username_len);
	}else{
		snprintf(s->username, sizeof(s->username), "(anonymous)");
	}
	log_sanitize(s->client_id, sizeof(s->client_id), r->client_id, r->client_id_len);
	log_sanitize(s->topic, sizeof(s->topic), r->topic, r->topic_len);
}


/* Fills s from the event; returns NULL, or why the daemon cannot be asked. */
static const char *subject_from_event(struct acl_subject *s, const struct mosquitto_evt_acl_check *ed)
{
	struct policy_check_request *r = &s->request;
	const char *username, *client_id;

	memset(r, 0, sizeof(*r)); /* the renderings are written when a line is logged */
	s->client = ed->client;
	s->mosq_access = ed->access;
	r->topic = ed->topic;
	r->topic_len = ed->topic ? strlen(ed->topic) : 0;
	if(ed->client == NULL){
		return "no client";
	}
	client_id = mosquitto_client_id(ed->client);
	username = mosquitto_client_username(ed->client);
	r->client_id = client_id;
	r->client_id_len = client_id ? strlen(client_id) : 0;
	r->username = username;
	r->username_len = username ? strlen(username) : 0;
	if(client_id == NULL){
		return "no client id";
	}
	if(ed->topic == NULL){
		return "no topic";
	}
	if(!access_to_policy(ed->access, &r->access)){
		return "unknown access type";
	}
	return NULL;
}


static int on_rejected(struct policyd_plugin *plugin, struct acl_subject *s, const char *why)
{
	plugin->counters.rejected++;
	if(log_limiter_admit(&plugin->limiters.rejected)){
		subject_render(s);
		plog_admitted(&plugin->limiters.rejected, MOSQ_LOG_WARNING,
				"denied %s on '%s' for user '%s' client '%s' without asking: %s",
				access_name(s->mosq_access), s->topic, s->username, s->client_id, why);
	}
	return MOSQ_ERR_ACL_DENIED;
}


static int on_error(struct policyd_plugin *plugin, struct acl_subject *s,
		const struct policy_check_result *res)
{
	struct log_limiter *limiter = &plugin->limiters.errors[res->error];
	char detail[LOG_TOPIC_MAX];
	int level;

	plugin->counters.errors[res->error]++;
	plugin->failing_streak++;
	if(!log_limiter_admit(limiter)){
		return MOSQ_ERR_ACL_DENIED;
	}
	level = (res->error == POLICY_ERR_UNAVAILABLE || res->error == POLICY_ERR_DEADLINE)
			? MOSQ_LOG_WARNING : MOSQ_LOG_ERR;
	subject_render(s);
	log_sanitize_str(detail, sizeof(detail), res->detail);
	plog_admitted(limiter, level,
			"check failed (%s: %s); denied %s on '%s' for user '%s' client '%s'",
			policy_error_name(res->error), detail,
			access_name(s->mosq_access), s->topic, s->username, s->client_id);
	return MOSQ_ERR_ACL_DENIED;
}


/* Called for every answer; ends a run of failed checks. */
static void note_answer(struct policyd_plugin *plugin)
{
	if(plugin->failing_streak == 0){
		return;
	}
	if(log_limiter_admit(&plugin->limiters.recovered)){
		plog_admitted(&plugin->limiters.recovered, MOSQ_LOG_NOTICE,
				"daemon answering again after %" PRIu64 " failed check(s)",
				plugin->failing_streak);
	}
	plugin->failing_streak = 0;
}


static int on_denied(struct policyd_plugin *plugin, struct acl_subject *s,
		const struct policy_check_result *res)
{
	char rule[LOG_IDENT_MAX];

	plugin->counters.denied++;
	note_answer(plugin);
	if(log_limiter_admit(&plugin->limiters.denied)){
		subject_render(s);
		log_sanitize_str(rule, sizeof(rule), res->rule);
		plog_admitted(&plugin->limiters.denied, MOSQ_LOG_DEBUG,
				"denied %s on '%s' for user '%s' client '%s' by rule '%s' (generation %" PRIu64 ")",
				access_name(s->mosq_access), s->topic, s->username, s->client_id,
				rule, res->generation);
	}
	return MOSQ_ERR_ACL_DENIED;
}


/* ------------------------------------------------------------ caching */

static void subject_identity(const struct acl_subject *s, struct cache_identity *id)
{
	id->owner = s->client;
	id->username = s->request.username;
	id->client_id = s->request.client_id;
}


/* The generation in force, after taking `seen` into account (it only ever
 * grows, whichever thread learns of a newer one first); entries of any
 * other generation are dropped from the cache when it changes. */
static uint64_t generation_sync(struct policyd_plugin *plugin, uint64_t seen)
{
	uint64_t cur = atomic_load(&plugin->generation);

	while(seen > cur && !atomic_compare_exchange_weak(&plugin->generation, &cur, seen)){
		/* cur reloaded by the failed exchange */
	}
	if(seen > cur){
		cur = seen;
	}
	if(cur != plugin->cache_generation){
		cache_flush_generation(plugin->cache, cur);
		plugin->cache_generation = cur;
	}
	return cur;
}


/* generation_sync() for a check that brings no generation: on most checks
 * nothing has changed, and this is one load and one comparison. */
static inline uint64_t generation_current(struct policyd_plugin *plugin)
{
	uint64_t cur = atomic_load(&plugin->generation);

	return cur == plugin->cache_generation ? cur : generation_sync(plugin, 0);
}


static int64_t jittered_ttl_ms(int64_t ttl_ms)
{
	static uint64_t state = 0x9e3779b97f4a7c15ULL;

	state ^= state << 13;
	state ^= state >> 7;
	state ^= state << 17;
	return ttl_ms - (int64_t)(state % (uint64_t)(ttl_ms / TTL_JITTER_DIVISOR + 1));
}


/* The allows the daemon sent ahead (want_scopes): a READ or WRITE one is
 * cached as the scope of an allow for its access, like cache_scope (there is
 * no asked topic to check it against); a SUBSCRIBE one as the answer for
 * exactly its filter. */
static void remember_scopes_ahead(struct policyd_plugin *plugin, const struct cache_identity *id,
		const struct policy_grants *grants, uint64_t generation, int64_t expires_ms)
{
	struct cache_answer allow = {.allow = true, .generation = generation};
	size_t i;

	for(i = 0; i < grants->n; i++){
		const struct policy_scope_grant *g = &grants->grant[i];
		const char *text = grants->text + g->offset;
		bool exact = g->access == POLICY_ACCESS_SUBSCRIBE;

		cache_store(plugin->cache, id, (int)g->access, text, g->len, exact ? NULL : text, exact ? 0 : g->len,
				&allow, expires_ms);
	}
}


bool acl_caching(const struct policyd_plugin *plugin)
{
	return plugin->config.cache_ttl_s > 0 && cache_capacity(plugin->cache) > 0;
}


/* Whether to ask for the client's other allows with this miss: when the
 * cache holds nothing of it yet (a new connection's first check), so that a
 * device's first publish and delivery need no call of their own. */
static bool want_scopes(struct policyd_plugin *plugin, const struct acl_subject *s)
{
	struct cache_identity id;

	if(!acl_caching(plugin)){
		return false;
	}
	subject_identity(s, &id);
	return !cache_knows(plugin->cache, &id);
}


/* A TTL from the daemon, capped by ours; 0: not to be cached. */
static int64_t answer_ttl_ms(const struct policyd_plugin *plugin, uint32_t ttl_ms)
{
	int64_t cap_ms = (int64_t)plugin->config.cache_ttl_s * 1000;

	return (int64_t)ttl_ms > cap_ms ? cap_ms : (int64_t)ttl_ms;
}


void acl_remember_connect_scopes(struct policyd_plugin *plugin, struct mosquitto *client, const char *client_id,
		const struct policy_auth_result *res)
{
	struct cache_identity id = {.owner = client, .username = res->username, .client_id = client_id};
	int64_t ttl_ms = answer_ttl_ms(plugin, res->cache_ttl_ms);

	/* An answer of an older policy than one already known is not kept. */
	if(ttl_ms <= 0 || res->scopes.n == 0 || client_id == NULL || plugin->cache == NULL
			|| res->generation != generation_sync(plugin, res->generation)){
		return;
	}
	remember_scopes_ahead(plugin, &id, &res->scopes, res->generation, monotonic_ms() + jittered_ttl_ms(ttl_ms));
}


static void remember_answer(struct policyd_plugin *plugin, const struct acl_subject *s,
		const struct policy_check_result *res, int64_t now_ms)
{
	struct cache_answer answer = {.allow = res->outcome == POLICY_ALLOW, .generation = res->generation};
	struct cache_identity id;
	int64_t ttl_ms = answer_ttl_ms(plugin, res->cache_ttl_ms);
	uint64_t current = generation_sync(plugin, res->generation);

	/* An answer of an older policy than one already known is not kept. */
	if(ttl_ms <= 0 || res->generation != current || plugin->cache == NULL){
		return;
	}
	subject_identity(s, &id);
	remember_scopes_ahead(plugin, &id, &res->more, res->generation, now_ms + jittered_ttl_ms(ttl_ms));
	/* A scope must at least contain the asked topic; anything else is a
	 * daemon bug, and the answer is then kept for this topic only. */
	if(res->cache_scope_len > 0 && s->request.access != POLICY_ACCESS_SUBSCRIBE
			&& topic_filter_matches(res->cache_scope, res->cache_scope_len,
				s->request.topic, s->request.topic_len)){
		cache_store(plugin->cache, &id, s->mosq_access, s->request.topic, s->request.topic_len,
				res->cache_scope, res->cache_scope_len, &answer, now_ms + jittered_ttl_ms(ttl_ms));
		return;
	}
	cache_store(plugin->cache, &id, s->mosq_access, s->request.topic, s->request.topic_len,
			NULL, 0, &answer, now_ms + jittered_ttl_ms(ttl_ms));
}


/* How long past its expiry an answer may still be served (on_error stale). */
static int64_t stale_grace_ms(const struct policyd_plugin *plugin)
{
	if(plugin->config.on_error != ON_ERROR_STALE){
		return 0;
	}
	return (int64_t)plugin->config.stale_max_age_s * 1000;
}


static bool cache_answer(struct policyd_plugin *plugin, const struct acl_subject *s,
		int64_t now_ms, int64_t grace_ms, struct cache_answer *out)
{
	struct cache_identity id;

	subject_identity(s, &id);
	return cache_lookup(plugin->cache, &id, s->mosq_access, s->request.topic, s->request.topic_len,
			atomic_load(&plugin->generation), now_ms, grace_ms, out) == CACHE_HIT;
}


static int answer_rc(struct policyd_plugin *plugin, bool allow)
{
	if(allow){
		plugin->counters.allowed++;
		return MOSQ_ERR_SUCCESS;
	}
	plugin->counters.denied++;
	return MOSQ_ERR_ACL_DENIED;
}


/* on_error stale: an answer of the generation in force that expired at most
 * stale_max_age_s ago, if any. Returns -1 when there is none (the caller
 * denies). */
static int serve_stale(struct policyd_plugin *plugin, struct acl_subject *s,
		const char *why, int64_t now_ms)
{
	struct cache_answer answer;

	if(plugin->config.on_error != ON_ERROR_STALE
			|| !cache_answer(plugin, s, now_ms, stale_grace_ms(plugin), &answer)){
		return -1;
	}
	plugin->counters.stale_served++;
	if(log_limiter_admit(&plugin->limiters.stale)){
		subject_render(s);
		plog_admitted(&plugin->limiters.stale, MOSQ_LOG_WARNING,
				"no answer from the daemon (%s); served a cached %s past its expiry for %s on '%s' "
				"user '%s' client '%s' (on_error stale)", why, answer.allow ? "allow" : "deny",
				access_name(s->mosq_access), s->topic, s->username, s->client_id);
	}
	return answer_rc(plugin, answer.allow);
}


/* ----------------------------------------------------------- breaker */

static int on_breaker_open(struct policyd_plugin *plugin, struct acl_subject *s, int64_t now_ms)
{
	int rc;

	plugin->counters.breaker_rejected++;
	plugin->failing_streak++;
	rc = serve_stale(plugin, s, "circuit breaker open", now_ms);
	if(rc >= 0){
		return rc;
	}
	if(log_limiter_admit(&plugin->limiters.breaker)){
		subject_render(s);
		plog_admitted(&plugin->limiters.breaker, MOSQ_LOG_WARNING,
				"circuit breaker open (daemon missed %u deadlines in a row); denied %s on '%s' "
				"for user '%s' client '%s' without asking", plugin->breaker.misses,
				access_name(s->mosq_access), s->topic, s->username, s->client_id);
	}
	return MOSQ_ERR_ACL_DENIED;
}


/* Feeds the breaker; its cool-down starts when the missed call returned. */
static void record_call(struct policyd_plugin *plugin, const struct policy_check_result *res)
{
	bool missed = res->outcome == POLICY_ERROR && res->error == POLICY_ERR_DEADLINE;

	if(breaker_record(&plugin->breaker, missed, monotonic_ms()) && log_limiter_admit(&plugin->limiters.breaker)){
		plog_admitted(&plugin->limiters.breaker, MOSQ_LOG_WARNING,
				"circuit breaker opened after %u deadline miss(es) in a row: uncached checks are "
				"%s for %" PRId64 " ms, then one probe", plugin->breaker.misses,
				plugin->config.on_error == ON_ERROR_STALE ? "served stale or denied" : "denied",
				plugin->breaker.cooldown_ms);
	}
}


/* ------------------------------------------------------------ callback */

/* Mosquitto checks a retained message's publisher (a WRITE) with a stand-in
 * client that has no connection, hence no network address, under the
 * publisher's username and client id. Every live client has an address, from
 * its accept until it is freed. */
static inline bool is_stand_in(const struct mosquitto *client)
{
	return mosquitto_client_address(client) == NULL;
}


/* What travels with an uncached check besides the question: how the client was
 * verified and, when it has one, its certificate, so the daemon needs no memory
 * of the session. The certificate comes from the client's record (conn.c),
 * made at its first check: also for its will, which Mosquitto checks after the
 * TLS session is gone. */
static void attach_provenance(struct policyd_plugin *plugin, struct acl_subject *s, struct conn *c)
{
	struct policy_check_request *r = &s->request;

	if(c != NULL && c->password_verified){
		r->provenance = POLICY_PROVENANCE_PASSWORD;
	}else if(c != NULL && c->der != NULL){
		r->provenance = POLICY_PROVENANCE_CERTIFICATE;
		r->certificate_der = c->der;
		r->certificate_der_len = c->der_len;
		r->identity_by_daemon = plugin->config.identity == IDENTITY_CERT;
	}else if(c == NULL || c->has_certificate){
		/* a stand-in client (no record), or the certificate could not be kept */
		r->provenance = POLICY_PROVENANCE_UNKNOWN;
	}else{
		r->provenance = POLICY_PROVENANCE_BROKER;
	}
}


/* The client's record, made (with its certificate) at its first uncached
 * check. NULL for a stand-in client without a connection (no address). */
static struct conn *subject_conn(struct policyd_plugin *plugin, struct acl_subject *s)
{
	struct conn *c = conn_find(plugin->conns, s->client);
	X509 *cert;

	if(c != NULL && !c->offline){
		return c;
	}
	if(is_stand_in(s->client)){
		return NULL;
	}
	cert = mosquitto_client_certificate(s->client); /* a new reference, or NULL */
	if(cert == NULL && c != NULL){
		return c; /* offline: its will, decided with the certificate it connected with */
	}
	c = conn_track(plugin->conns, s->client, cert);
	X509_free(cert);
	return c;
}


/* The daemon said this connection must end (revoked, mismatched, unbound id). */
static void doom_connection(struct policyd_plugin *plugin, struct acl_subject *s)
{
	if(conn_doom(plugin->conns, conn_find(plugin->conns, s->client)) > 0
			&& log_limiter_admit(&plugin->limiters.denied)){
		subject_render(s);
		plog_admitted(&plugin->limiters.denied, MOSQ_LOG_NOTICE, "disconnecting client '%s' (user '%s'): "
				"policyd says this connection must end", s->client_id, s->username);
	}
}


/* An answer for Mosquitto's stand-in client (a retained message's publisher,
 * a session without its certificate) was decided without the certificate,
 * so no `certificates` rule took part; it shares the identity (username,
 * client id) of the live connection, which must never be served it. */
static bool answer_cacheable(const struct acl_subject *s)
{
	return s->request.provenance != POLICY_PROVENANCE_UNKNOWN;
}


static int ask_daemon(struct policyd_plugin *plugin, struct acl_subject *s, int64_t now_ms)
{
	struct policy_check_result res;
	struct conn *c = subject_conn(plugin, s);
	int64_t asked_us;
	int rc;

	if(c != NULL && c->doomed){
		return on_rejected(plugin, s, "policyd ended this connection (revoked or refused)");
	}
	attach_provenance(plugin, s, c);
	s->request.want_scopes = want_scopes(plugin, s);
	asked_us = monotonic_us();
	policy_client_check(plugin->client, &s->request, &res);
	stats_round_trip(&plugin->round_trips, monotonic_us() - asked_us);
	s->request.certificate_der = NULL;
	record_call(plugin, &res);
	switch(res.outcome){
		case POLICY_ALLOW:
			note_answer(plugin);
			if(answer_cacheable(s)){
				remember_answer(plugin, s, &res, now_ms);
			}
			return answer_rc(plugin, true);
		case POLICY_DENY:
			if(res.disconnect){
				doom_connection(plugin, s);
			}else if(answer_cacheable(s)){
				remember_answer(plugin, s, &res, now_ms);
			}
			return on_denied(plugin, s, &res);
		case POLICY_ERROR:
			break;
	}
	if(res.outcome != POLICY_ERROR || res.error <= POLICY_ERR_NONE || res.error >= POLICY_ERR__COUNT){
		res.outcome = POLICY_ERROR;
		res.error = POLICY_ERR_INTERNAL;
	}
	/* Stale answers stand in for an answer that never came, not for one the
	 * daemon gave and the shim could not use (status, protocol, internal). */
	rc = policy_error_is_no_answer(res.error) ? serve_stale(plugin, s, policy_error_name(res.error), now_ms) : -1;
	if(rc >= 0){
		plugin->counters.errors[res.error]++;
		plugin->failing_streak++;
		return rc;
	}
	return on_error(plugin, s, &res);
}


/* Checks still run without TICK (fail closed), but revocation kicks, Watch
 * events and stats reports do not: say so loudly, and report it from here
 * (the report is asynchronous; kicking from inside a check is not safe). */
static __attribute__((noinline)) void tick_overdue(struct policyd_plugin *plugin, int64_t now_ms)
{
	int64_t since = plugin->tick_due_by_ms - TICK_EXPECTED_WITHIN_MS;

	if(plugin->tick_due_by_ms == 0){
		plugin->tick_due_by_ms = now_ms + TICK_EXPECTED_WITHIN_MS; /* the first check */
		return;
	}
	if(!plugin->tick_missing){
		plugin->tick_missing = true;
		plugin->counters.tick_missing_episodes++;
		plugin->stats_next_ms = now_ms; /* report it now */
	}
	if(log_limiter_admit(&plugin->tick_log)){
		plog_admitted(&plugin->tick_log, MOSQ_LOG_ERR, "no MOSQ_EVT_TICK from the broker for %" PRId64 " ms: "
				"revocation kicks, policy events from the Watch stream and stats reports are NOT happening "
				"(Mosquitto 2.0 sends no TICK with per_listener_settings true; set it to false). "
				"ACL checks still ask policyd.", now_ms - since);
	}
	stats_on_tick(plugin, now_ms);
}


/* One comparison on every check: the deadline moves with each TICK. */
static inline void tick_watchdog(struct policyd_plugin *plugin, int64_t now_ms)
{
	if(now_ms >= plugin->tick_due_by_ms){
		tick_overdue(plugin, now_ms);
	}
}


/* A check the cache could not answer, or one that cannot be asked at all.
 * Out of line, so that a hit does not pay for this frame. */
static __attribute__((noinline)) int check_uncached(struct policyd_plugin *plugin,
		const struct mosquitto_evt_acl_check *ed, int64_t now_ms)
{
	struct acl_subject subject;
	const char *why = subject_from_event(&subject, ed);

	if(why != NULL){
		return on_rejected(plugin, &subject, why);
	}
	plugin->counters.cache_misses++;
	if(!breaker_allows(&plugin->breaker, now_ms)){
		return on_breaker_open(plugin, &subject, now_ms);
	}
	return ask_daemon(plugin, &subject, now_ms);
}


int acl_check_callback(int event, void *event_data, void *userdata)
{
	struct policyd_plugin *plugin = userdata;
	const struct mosquitto_evt_acl_check *ed = event_data;
	struct cache_identity id;
	struct cache_answer cached;
	int64_t now_ms;

	if(plugin == NULL || ed == NULL || event != MOSQ_EVT_ACL_CHECK){
		return MOSQ_ERR_ACL_DENIED;
	}
	plugin->counters.checks++;
	/* The cache is asked straight from the event: a hit needs no request, no
	 * length but the topic's, and no copy of anything. */
	id.client_id = ed->client != NULL ? mosquitto_client_id(ed->client) : NULL;
	if(id.client_id == NULL || ed->topic == NULL){
		return check_uncached(plugin, ed, 0); /* rejected there, with the reason */
	}
	now_ms = monotonic_ms();
	tick_watchdog(plugin, now_ms);
	/* A stand-in is decided without a certificate, and its live connection's
	 * entries, under the same identity, were decided with one: it is asked,
	 * never served from them (answer_cacheable). */
	if(ed->access == MOSQ_ACL_WRITE && is_stand_in(ed->client)){
		return check_uncached(plugin, ed, now_ms);
	}
	id.owner = ed->client;
	id.username = mosquitto_client_username(ed->client);
	/* An access the cache has no slot for is a miss, and check_uncached()
	 * rejects it; a newer generation from the Watch stream flushes first. */
	if(cache_lookup(plugin->cache, &id, ed->access, ed->topic, strlen(ed->topic),
				generation_current(plugin), now_ms, 0, &cached) == CACHE_HIT){
		plugin->counters.cache_hits++;
		return answer_rc(plugin, cached.allow);
	}
	return check_uncached(plugin, ed, now_ms);
}


/* DISCONNECT comes before Mosquitto closes the socket and checks the will: the
 * certificate is still readable here, so a client that made no check yet gets
 * its record now, and its will is decided with its certificate. */
static void connection_going_offline(struct policyd_plugin *plugin, struct mosquitto *client)
{
	X509 *cert;

	if(conn_find(plugin->conns, client) == NULL && !is_stand_in(client)){
		cert = mosquitto_client_certificate(client); /* a new reference, or NULL */
		conn_track(plugin->conns, client, cert);
		X509_free(cert);
	}
	conn_set_offline(plugin->conns, client, monotonic_ms());
}


int acl_disconnect_callback(int event, void *event_data, void *userdata)
{
	struct policyd_plugin *plugin = userdata;
	const struct mosquitto_evt_disconnect *ed = event_data;
	struct cache_identity id;

	/* 2.1's CLIENT_OFFLINE data has the same layout as DISCONNECT's. */
	if(plugin == NULL || ed == NULL || ed->client == NULL
			|| (event != MOSQ_EVT_DISCONNECT && event != BROKER_EVT_CLIENT_OFFLINE)){
		return MOSQ_ERR_SUCCESS;
	}
	connection_going_offline(plugin, ed->client);
	id.owner = ed->client;
	id.client_id = mosquitto_client_id(ed->client);
	if(id.client_id == NULL){
		return MOSQ_ERR_SUCCESS; /* nothing was cached for it: checks need a client id */
	}
	id.username = mosquitto_client_username(ed->client);
	cache_drop_client(plugin->cache, &id);
	return MOSQ_ERR_SUCCESS;
}


int acl_cache_start(struct policyd_plugin *plugin)
{
	const struct policyd_config *cfg = &plugin->config;
	struct cache_limits limits = {
		.max_entries = (size_t)cfg->cache_size,
		.max_bytes = (size_t)cfg->cache_bytes,
		.max_client_entries = (size_t)cfg->cache_client_entries,
		.max_text_len = CONFIG_CACHE_TEXT_MAX,
	};

	plugin->cache = cache_create(&limits);
	if(plugin->cache == NULL){
		plog(MOSQ_LOG_ERR, "out of memory for a decision cache of %d entries", cfg->cache_size);
		return MOSQ_ERR_NOMEM;
	}
	return MOSQ_ERR_SUCCESS;
}


/* TICK: frees a slice of the entries no check can use any more. */
void acl_on_tick(struct policyd_plugin *plugin, int64_t now_ms)
{
	plugin->tick_due_by_ms = now_ms + TICK_EXPECTED_WITHIN_MS;
	plugin->tick_missing = false;
	if(cache_sweep_at_start(plugin->cache) && now_ms < plugin->sweep_resume_ms){
		return;
	}
	(void)cache_sweep(plugin->cache, now_ms - stale_grace_ms(plugin), SWEEP_VISITS_PER_TICK);
	if(cache_sweep_at_start(plugin->cache)){
		plugin->sweep_resume_ms = now_ms + SWEEP_PASS_PAUSE_MS;
	}
}
