/*
 * MOSQ_EVT_BASIC_AUTH: who a connecting client is.
 *
 * Identity mode: certificate (DER) + client id + username presence +
 * password presence + peer address go to Policy.Authenticate; allow sets the
 * username to the daemon's identity, a deny refuses the CONNECT ("not
 * authorized").
 *
 * Broker mode (the default): the broker calls this only on listeners without
 * use_identity_as_username, where a username is merely what the client sent.
 * No username: the broker's allow_anonymous decides. A username: a claim,
 * accepted only with a password policyd verifies (`passwords:`); otherwise
 * refused, so no listener lets a client act as a name nobody verified.
 *
 * Never cached: every CONNECT is asked, so a revoked certificate is refused at
 * its next attempt. A password goes only to policyd, never to a log.
 *
 * No answer (daemon down, hung, breaker open, broken answer) refuses too,
 * but as a retryable failure, never "not authorized": devices give up on
 * that. The ACL checks' circuit breaker guards these calls as well.
 *
 * A broker SIGHUP re-runs BASIC_AUTH for every connected client. A live
 * connection this plugin accepted (its conn.h record) is not a new CONNECT:
 * with the same certificate it is answered without a call; a password one is
 * asked again on this thread (never delayed: the client is live) and, on
 * 2.1, kept when no answer comes, since an outage is no evidence against a
 * password already verified; its checks stay fail-closed and revocations
 * still kick. 2.0 cannot prove a re-authentication: there it is refused as
 * retryable without an answer.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "acl.h"
#include "auth.h"
#include "auth_delayed.h"
#include "broker_compat.h"
#include "conn.h"
#include "plugin_state.h"

#define AUTH_DENIED_LOG_BURST 20
#define AUTH_REJECTED_LOG_BURST 5
#define AUTH_ERROR_LOG_BURST 1
/* MOSQ_ERR_SERVER_UNAVAILABLE of Mosquitto 2.1's headers (not in 2.0's):
 * 2.1 answers it with CONNACK 0x88 to an MQTT 5 client; 2.0 treats it as
 * any unknown code and closes the connection without a CONNACK. */
#define AUTH_RC_SERVER_UNAVAILABLE 136


void auth_init(struct policyd_auth *auth)
{
	memset(auth, 0, sizeof(*auth));
	log_limiter_init(&auth->denied_log, AUTH_DENIED_LOG_BURST);
	log_limiter_init(&auth->rejected_log, AUTH_REJECTED_LOG_BURST);
	log_limiter_init(&auth->error_log, AUTH_ERROR_LOG_BURST);
}


/* The client's certificate as DER (OPENSSL_free it), or NULL. */
static unsigned char *client_certificate_der(struct mosquitto *client, size_t *len)
{
	unsigned char *der = NULL;
	X509 *cert;
	int n;

	*len = 0;
	cert = mosquitto_client_certificate(client); /* a new reference, or NULL */
	if(cert == NULL){
		return NULL;
	}
	n = i2d_X509(cert, &der);
	X509_free(cert);
	if(n <= 0){
		return NULL;
	}
	*len = (size_t)n;
	return der;
}


static int auth_refuse_local(struct policyd_plugin *plugin, const char *client_id, const char *why)
{
	char shown[LOG_IDENT_MAX];

	plugin->auth.rejected++;
	if(log_limiter_admit(&plugin->auth.rejected_log)){
		plog_admitted(&plugin->auth.rejected_log, MOSQ_LOG_WARNING, "CONNECT of client '%s' refused: %s",
				log_sanitize_str(shown, sizeof(shown), client_id), why);
	}
	return MOSQ_ERR_AUTH;
}


static int auth_refuse(struct policyd_plugin *plugin, const char *client_id,
		const struct policy_auth_result *res)
{
	char shown[LOG_IDENT_MAX];
	char detail[LOG_TOPIC_MAX];

	if(res->outcome == POLICY_DENY){
		plugin->auth.denied++;
		if(log_limiter_admit(&plugin->auth.denied_log)){
			plog_admitted(&plugin->auth.denied_log, MOSQ_LOG_NOTICE, "CONNECT of client '%s' refused by policyd: %s",
					log_sanitize_str(shown, sizeof(shown), client_id),
					log_sanitize_str(detail, sizeof(detail), res->detail));
		}
		return MOSQ_ERR_AUTH;
	}
	plugin->auth.errors[res->error < POLICY_ERR__COUNT ? res->error : POLICY_ERR_INTERNAL]++;
	if(log_limiter_admit(&plugin->auth.error_log)){
		plog_admitted(&plugin->auth.error_log, MOSQ_LOG_ERR, "CONNECT of client '%s' refused as retryable: no "
				"answer from policyd (%s: %s)", log_sanitize_str(shown, sizeof(shown), client_id),
				policy_error_name(res->error), log_sanitize(detail, sizeof(detail), res->detail, strlen(res->detail)));
	}
	return MOSQ_ERR_UNKNOWN; /* the caller makes it retryable */
}


/* A refusal the client should retry (see AUTH_RC_SERVER_UNAVAILABLE). An
 * MQTT 3 client would get "not authorized" from 2.1 for that code, so its
 * connection is closed without a CONNACK instead. */
static int auth_retryable_rc(struct mosquitto *client)
{
	return mosquitto_client_protocol_version(client) == 5 ? AUTH_RC_SERVER_UNAVAILABLE : MOSQ_ERR_UNKNOWN;
}


/* Breaker open: refused at once, as retryable, without asking. */
static int auth_breaker_refuse(struct policyd_plugin *plugin, struct mosquitto *client, const char *client_id)
{
	char shown[LOG_IDENT_MAX];

	plugin->auth.breaker_refused++;
	if(log_limiter_admit(&plugin->auth.error_log)){
		plog_admitted(&plugin->auth.error_log, MOSQ_LOG_WARNING, "CONNECT of client '%s' refused as retryable "
				"without asking: circuit breaker open (policyd missed its deadlines)",
				log_sanitize_str(shown, sizeof(shown), client_id));
	}
	return auth_retryable_rc(client);
}


/* Passwords travel only over a unix socket: plaintext TCP is loopback-only
 * but still readable by any local user who can sniff it. */
static bool auth_may_send_password(const struct policyd_plugin *plugin, const struct mosquitto_evt_basic_auth *ed)
{
	return ed->username != NULL && ed->password != NULL
		&& (strncmp(plugin->config.address, "unix:", 5) == 0 || link_tls_enabled(&plugin->tls));
}


static void auth_request_fill(struct policy_auth_request *req, struct mosquitto *client,
		const struct mosquitto_evt_basic_auth *ed)
{
	const char *client_id = mosquitto_client_id(client);

	memset(req, 0, sizeof(*req));
	req->client_id = client_id;
	req->client_id_len = client_id ? strlen(client_id) : 0;
	req->username = ed->username;
	req->username_len = ed->username ? strlen(ed->username) : 0;
	req->has_password = ed->password != NULL;
	req->peer_address = mosquitto_client_address(client);
}


/* Records the accepted connection (conn.h): what it was verified by, and
 * its certificate's facts, so a re-authentication needs no call. */
static int auth_accepted(struct policyd_plugin *plugin, struct mosquitto *client, const char *client_id,
		const char *identity, bool by_password)
{
	X509 *cert = by_password ? NULL : mosquitto_client_certificate(client);
	struct conn *c = conn_track(plugin->conns, client, cert);

	X509_free(cert); /* NULL-safe */
	if(c == NULL || !conn_set_authenticated(c, identity, by_password)){
		return auth_refuse_local(plugin, client_id, "out of memory for the connection table");
	}
	plugin->auth.allowed++;
	return MOSQ_ERR_SUCCESS;
}


/* Broker mode: a username is a claim, verified here by password or refused. */
static int auth_claimed_username(struct policyd_plugin *plugin, const struct mosquitto_evt_basic_auth *ed,
		struct policy_auth_request *req)
{
	struct policy_auth_result res;

	if(ed->username == NULL){
		return MOSQ_ERR_PLUGIN_DEFER; /* anonymous: the broker's allow_anonymous decides */
	}
	if(!auth_may_send_password(plugin, ed)){
		return auth_refuse_local(plugin, req->client_id, "a username sent in CONNECT is only a claim: it needs "
				"a password that policyd verifies (over a unix: address or the TLS link), or a listener with "
				"use_identity_as_username true");
	}
	req->password = ed->password;
	req->password_len = strlen(ed->password);
	policy_client_authenticate(plugin->client, req, &res);
	if(res.outcome != POLICY_ALLOW){
		return auth_refuse(plugin, req->client_id, &res);
	}
	if(strcmp(res.username, ed->username) != 0){
		return auth_refuse_local(plugin, req->client_id, "policyd verified a different username");
	}
	return auth_accepted(plugin, ed->client, req->client_id, ed->username, true);
}


/* The password re-authentication of a live connection (see the top). It is
 * kept without an answer only where the broker proves it is a
 * re-authentication (2.1: `registered`); 2.0 cannot tell it from a new
 * CONNECT at a reused client pointer, which must never pass unverified. */
static int auth_reask_password(struct policyd_plugin *plugin, const struct mosquitto_evt_basic_auth *ed,
		struct policy_auth_request *req, const struct conn *c, bool registered)
{
	struct policy_auth_result res;
	char shown[LOG_IDENT_MAX];

	res.outcome = POLICY_ERROR;
	res.error = POLICY_ERR_UNAVAILABLE;
	if(breaker_allows(&plugin->breaker, monotonic_ms())){
		req->password = ed->password;
		req->password_len = strlen(ed->password);
		policy_client_authenticate(plugin->client, req, &res);
		(void)breaker_record(&plugin->breaker, res.outcome == POLICY_ERROR && res.error == POLICY_ERR_DEADLINE,
				monotonic_ms());
	}
	if(res.outcome == POLICY_ERROR && !registered){
		return auth_refuse(plugin, req->client_id, &res);   /* the broker disconnects it: retryable */
	}
	if(res.outcome == POLICY_ERROR){
		plugin->auth.reauth_kept++;
		if(log_limiter_admit(&plugin->auth.error_log)){
			plog_admitted(&plugin->auth.error_log, MOSQ_LOG_WARNING, "re-authentication of client '%s' kept "
					"without an answer from policyd (its password was verified at CONNECT)",
					log_sanitize_str(shown, sizeof(shown), req->client_id));
		}
		return MOSQ_ERR_SUCCESS;
	}
	if(res.outcome != POLICY_ALLOW){
		return auth_refuse(plugin, req->client_id, &res);
	}
	if(strcmp(res.username, c->identity) != 0){
		return auth_refuse_local(plugin, req->client_id, "policyd verified a different username");
	}
	plugin->auth.reauth_asked++;
	return MOSQ_ERR_SUCCESS;
}


/* A re-authentication of a live connection accepted here: true with *rc
 * set; false when this is a CONNECT to decide afresh. `digest`: the SHA-256
 * of the client's certificate, or NULL without one. */
static bool auth_reauthenticate(struct policyd_plugin *plugin, const struct mosquitto_evt_basic_auth *ed,
		struct policy_auth_request *req, const unsigned char *digest, bool registered, int *rc)
{
	const struct conn *c = conn_authenticated_as(plugin->conns, ed->client, ed->username);

	if(c == NULL){
		return false;
	}
	if(digest != NULL){
		if(!c->has_certificate || c->password_verified || memcmp(c->sha256, digest, sizeof(c->sha256)) != 0){
			return false;
		}
		plugin->auth.reauth_known++;
		*rc = MOSQ_ERR_SUCCESS;
		return true;
	}
	if(!c->password_verified || !auth_may_send_password(plugin, ed)){
		return false;
	}
	*rc = auth_reask_password(plugin, ed, req, c, registered);
	return true;
}


/* A re-authentication (the client is registered: broker_compat.h) that is
 * not of a live connection this plugin accepted. Never a new CONNECT: asked
 * as one it could answer, or supersede, a CONNECT waiting with the same
 * client id. An offline session (its record says so) has no connection to
 * keep or end and is left alone; anything else is refused. */
static int auth_reauth_other(struct policyd_plugin *plugin, const struct mosquitto_evt_basic_auth *ed,
		const char *client_id)
{
	const struct conn *c = conn_find(plugin->conns, ed->client);

	if(c != NULL && c->offline){
		plugin->auth.reauth_offline++;
		return MOSQ_ERR_SUCCESS;
	}
	if(ed->username == NULL && plugin->config.identity != IDENTITY_CERT){
		return MOSQ_ERR_PLUGIN_DEFER; /* anonymous: the broker's allow_anonymous decides, as at CONNECT */
	}
	return auth_refuse_local(plugin, client_id, "re-authentication of a connection this plugin did not accept "
			"with these credentials");
}


int auth_basic_callback(int event, void *event_data, void *userdata)
{
	struct policyd_plugin *plugin = userdata;
	struct mosquitto_evt_basic_auth *ed = event_data;
	struct policy_auth_request req;
	struct policy_auth_result res;
	unsigned char digest[SHA256_DIGEST_LENGTH];
	unsigned char *der;
	size_t der_len;
	bool has_cert;
	enum broker_registered registered;
	int rc;

	(void)event;
	if(plugin == NULL || ed == NULL || ed->client == NULL){
		return MOSQ_ERR_AUTH;
	}
	auth_request_fill(&req, ed->client, ed);
	der_len = 0;
	der = plugin->config.identity == IDENTITY_CERT ? client_certificate_der(ed->client, &der_len) : NULL;
	has_cert = der != NULL;
	if(has_cert){
		SHA256(der, der_len, digest);
	}
	registered = broker_client_registered(ed->client);
	if(registered != BROKER_REGISTERED_NO && auth_reauthenticate(plugin, ed, &req, has_cert ? digest : NULL,
			registered == BROKER_REGISTERED_YES, &rc)){
		OPENSSL_free(der);
		return rc;
	}
	if(registered == BROKER_REGISTERED_YES){
		OPENSSL_free(der);
		return auth_reauth_other(plugin, ed, req.client_id);
	}
	/* A new CONNECT on this client: nothing verified before carries over. */
	conn_drop(plugin->conns, ed->client);
	if(plugin->config.identity != IDENTITY_CERT){
		return auth_claimed_username(plugin, ed, &req);
	}
	if(der == NULL && !auth_may_send_password(plugin, ed)){
		return auth_refuse_local(plugin, req.client_id, "no client certificate, and no password that may "
				"be sent to policyd (a password client needs a username, a password and a unix: address)");
	}
	if(der == NULL){
		req.password = ed->password;
		req.password_len = strlen(ed->password);
	}
	if(!breaker_allows(&plugin->breaker, monotonic_ms())){
		OPENSSL_free(der);
		return auth_breaker_refuse(plugin, ed->client, req.client_id);
	}
	req.certificate_der = der;
	req.certificate_der_len = der_len;
	req.want_scopes = acl_caching(plugin);
	if(plugin->auth_delayed != NULL){
		/* Mosquitto 2.1: answered from a worker thread, completed on a TICK. */
		rc = auth_delayed_begin(plugin->auth_delayed, ed->client, &req);
		OPENSSL_free(der);
		return rc;
	}
	policy_client_authenticate(plugin->client, &req, &res);
	(void)breaker_record(&plugin->breaker, res.outcome == POLICY_ERROR && res.error == POLICY_ERR_DEADLINE,
			monotonic_ms());
	OPENSSL_free(der); /* NULL-safe */
	if(res.outcome == POLICY_ERROR){
		(void)auth_refuse(plugin, req.client_id, &res);
		return auth_retryable_rc(ed->client);
	}
	rc = auth_outcome(plugin, req.client_id, &res);
	if(rc != MOSQ_ERR_SUCCESS){
		return rc;
	}
	return auth_set_identity(plugin, ed->client, req.client_id, &res, !has_cert);
}


int auth_outcome(struct policyd_plugin *plugin, const char *client_id, const struct policy_auth_result *res)
{
	return res->outcome == POLICY_ALLOW ? MOSQ_ERR_SUCCESS : auth_refuse(plugin, client_id, res);
}


int auth_set_identity(struct policyd_plugin *plugin, struct mosquitto *client, const char *client_id,
		const struct policy_auth_result *res, bool by_password)
{
	int rc;

	if(mosquitto_set_username(client, res->username) != MOSQ_ERR_SUCCESS){
		return auth_refuse_local(plugin, client_id, "cannot set the username to policyd's identity");
	}
	rc = auth_accepted(plugin, client, client_id, res->username, by_password);
	if(rc == MOSQ_ERR_SUCCESS){
		acl_remember_connect_scopes(plugin, client, client_id, res);
	}
	return rc;
}


void auth_log_stats(const struct policyd_plugin *plugin)
{
	const struct policyd_auth *a = &plugin->auth;

	plog(MOSQ_LOG_INFO, "identity: connects allowed=%" PRIu64 " denied=%" PRIu64 " rejected=%" PRIu64
			" reauth_known=%" PRIu64 " reauth_asked=%" PRIu64 " reauth_kept=%" PRIu64 " reauth_offline=%" PRIu64
			" breaker_refused=%" PRIu64
			" errors: unavailable=%" PRIu64 " deadline=%" PRIu64 " status=%" PRIu64 " protocol=%" PRIu64
			" internal=%" PRIu64, a->allowed, a->denied, a->rejected, a->reauth_known, a->reauth_asked, a->reauth_kept,
			a->reauth_offline, a->breaker_refused,
			a->errors[POLICY_ERR_UNAVAILABLE], a->errors[POLICY_ERR_DEADLINE], a->errors[POLICY_ERR_STATUS],
			a->errors[POLICY_ERR_PROTOCOL], a->errors[POLICY_ERR_INTERNAL]);
}
