#ifndef POLICYD_ACL_H
#define POLICYD_ACL_H

struct policyd_plugin;

void acl_limiters_init(struct policyd_plugin *plugin);

/* MOSQ_EVT_ACL_CHECK callback; userdata is the struct policyd_plugin.
 * Returns MOSQ_ERR_SUCCESS only when policyd answered RESULT_ALLOW and
 * MOSQ_ERR_ACL_DENIED in every other case. */
int acl_check_callback(int event, void *event_data, void *userdata);

#endif
