/*
 * Identity mode on Mosquitto 2.1: CONNECTs answered without blocking the
 * broker's main thread (delayed basic auth).
 *
 * BASIC_AUTH copies the request, queues it for a worker thread (each with its
 * own gRPC client) and returns MOSQ_ERR_AUTH_DELAYED. The TICK hands each
 * answer to mosquitto_complete_basic_auth(), which must run on the main
 * thread. 2.1 identifies a waiting CONNECT only by its client id and lets a
 * client disconnect (and be freed) while it waits, so the plugin never keeps
 * a client pointer past the callback that gave it: the client's username is
 * replaced at BASIC_AUTH by a marker naming its job, and the identity is set
 * from inside the completion, on the pointer the broker hands to the first
 * callback it makes for that client (an ACL check of a resumed session's
 * messages, or MOSQ_EVT_CONNECT) — the same client that sent the CONNECT,
 * recognised by its address and its marker. A newer CONNECT with the same
 * client id supersedes an older one's answer, which is then dropped. No
 * answer from policyd: asked again for a short window, then the connection is
 * closed without CONNACK (auth_delayed.c says why). 2.0 keeps the synchronous
 * path.
 */
#ifndef POLICYD_AUTH_DELAYED_H
#define POLICYD_AUTH_DELAYED_H

#include <stdbool.h>
#include <stdint.h>

#include <mosquitto_broker.h>

#include "policy_client.h"

struct policyd_plugin;
struct auth_delayed;

struct auth_delayed_stats {
	uint64_t queued;       /* CONNECTs handed to a worker */
	uint64_t completed;    /* answers handed to the broker */
	uint64_t superseded;   /* answers dropped: a newer CONNECT with the same client id */
	uint64_t overflow;     /* refused at once (retryable): too many CONNECTs waiting */
	uint64_t retried;      /* asks repeated after no answer */
	uint64_t unanswered;   /* closed without CONNACK: no answer within the retry window */
};

/* NULL with *errmsg set on failure. */
struct auth_delayed *auth_delayed_create(const struct policy_client_options *opts, const char **errmsg);

/* Stops and joins the workers; answers not yet handed over are dropped. NULL is fine. */
void auth_delayed_destroy(struct auth_delayed *ad);

/* From BASIC_AUTH (main thread), with a request auth.c checked and filled.
 * MOSQ_ERR_AUTH_DELAYED when queued; MOSQ_ERR_AUTH for a request that can
 * never be asked (no client id, oversized certificate); a retryable refusal
 * when every slot is taken. */
int auth_delayed_begin(struct auth_delayed *ad, struct mosquitto *client, const struct policy_auth_request *req);

/* From the TICK (main thread): completes every answered CONNECT. */
void auth_delayed_on_tick(struct policyd_plugin *plugin);

/* From any callback that carries a client, before anything else: sets the
 * identity of the client being completed right now. */
void auth_delayed_claim(struct policyd_plugin *plugin, struct mosquitto *client);

/* True while CONNECTs wait: the tick should come sooner. */
bool auth_delayed_waiting(const struct auth_delayed *ad);

void auth_delayed_get_stats(const struct auth_delayed *ad, struct auth_delayed_stats *out);

#endif
