#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "acl.h"
#include "plugin_state.h"

/* Lines per LOG_LIMIT_WINDOW_MS. */
#define ERROR_LOG_BURST 1
#define DENIED_LOG_BURST 20
#define REJECTED_LOG_BURST 1
#define RECOVERED_LOG_BURST 1

/* The request as the broker gave it, plus log-safe renderings made only
 * when a line is actually logged. */
struct acl_subject {
	struct policy_check_request request;
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

	memset(s, 0, sizeof(*s));
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


int acl_check_callback(int event, void *event_data, void *userdata)
{
	struct policyd_plugin *plugin = userdata;
	const struct mosquitto_evt_acl_check *ed = event_data;
	struct policy_check_result res;
	struct acl_subject subject;
	const char *why;

	if(plugin == NULL || ed == NULL || event != MOSQ_EVT_ACL_CHECK){
		return MOSQ_ERR_ACL_DENIED;
	}
	plugin->counters.checks++;
	why = subject_from_event(&subject, ed);
	if(why != NULL){
		return on_rejected(plugin, &subject, why);
	}
	policy_client_check(plugin->client, &subject.request, &res);
	switch(res.outcome){
		case POLICY_ALLOW:
			plugin->counters.allowed++;
			note_answer(plugin);
			return MOSQ_ERR_SUCCESS;
		case POLICY_DENY:
			return on_denied(plugin, &subject, &res);
		case POLICY_ERROR:
			break;
	}
	if(res.outcome != POLICY_ERROR || res.error <= POLICY_ERR_NONE || res.error >= POLICY_ERR__COUNT){
		res.outcome = POLICY_ERROR;
		res.error = POLICY_ERR_INTERNAL;
	}
	return on_error(plugin, &subject, &res);
}
