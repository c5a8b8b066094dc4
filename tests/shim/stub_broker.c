/*
 * A stand-in for the parts of the Mosquitto broker the plugin calls, so
 * pytest can load the real plugin in-process (via cffi) and drive its
 * callbacks. Loaded with RTLD_GLOBAL before the plugin, so the plugin's
 * undefined mosquitto_* symbols resolve here. Records what the plugin
 * does (callbacks registered, log lines, kicks) for the tests to inspect.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

/* The broker's client, reduced to what the getters return. */
struct mosquitto {
	const char *id;
	const char *username;
};

#define STUB_EVENTS 16
#define STUB_LOG_LINES 4096

struct stub_callback {
	MOSQ_FUNC_generic_callback cb;
	void *userdata;
};

static struct stub_callback callbacks[STUB_EVENTS];
static char *log_lines[STUB_LOG_LINES];
static int log_levels[STUB_LOG_LINES];
static int log_count;
static int kicks;
static char last_kick[256];


int mosquitto_callback_register(mosquitto_plugin_id_t *identifier, int event,
		MOSQ_FUNC_generic_callback cb_func, const void *event_data, void *userdata)
{
	(void)identifier;
	(void)event_data;
	if(cb_func == NULL){
		return MOSQ_ERR_INVAL;
	}
	if(event < 0 || event >= STUB_EVENTS){
		return MOSQ_ERR_NOT_SUPPORTED; /* as a broker answers for an event it does not know */
	}
	if(callbacks[event].cb != NULL){
		return MOSQ_ERR_ALREADY_EXISTS;
	}
	callbacks[event].cb = cb_func;
	callbacks[event].userdata = userdata;
	return MOSQ_ERR_SUCCESS;
}


int mosquitto_callback_unregister(mosquitto_plugin_id_t *identifier, int event,
		MOSQ_FUNC_generic_callback cb_func, const void *event_data)
{
	(void)identifier;
	(void)event_data;
	if(event < 0 || event >= STUB_EVENTS || callbacks[event].cb != cb_func){
		return MOSQ_ERR_NOT_FOUND;
	}
	callbacks[event].cb = NULL;
	callbacks[event].userdata = NULL;
	return MOSQ_ERR_SUCCESS;
}


void mosquitto_log_printf(int level, const char *fmt, ...)
{
	char line[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if(log_count < STUB_LOG_LINES){
		log_levels[log_count] = level;
		log_lines[log_count++] = strdup(line);
	}
}


/* The broker's allocator: counts what is outstanding, as the broker's
 * memory tracking ($SYS heap figures, memory_limit) would. */
static int64_t heap_bytes;
static int64_t heap_blocks;

void *mosquitto_calloc(size_t nmemb, size_t size)
{
	size_t total;
	size_t *block;

	if(size != 0 && nmemb > (SIZE_MAX - 16) / size){
		return NULL;
	}
	total = nmemb * size;
	block = calloc(1, total + 16);
	if(block == NULL){
		return NULL;
	}
	block[0] = total;
	heap_bytes += (int64_t)total;
	heap_blocks++;
	return (char *)block + 16;
}


void *mosquitto_malloc(size_t size)
{
	return mosquitto_calloc(1, size);
}


void mosquitto_free(void *mem)
{
	size_t *block;

	if(mem == NULL){
		return;
	}
	block = (size_t *)((char *)mem - 16);
	heap_bytes -= (int64_t)block[0];
	heap_blocks--;
	free(block);
}


int64_t stub_heap_bytes(void)
{
	return heap_bytes;
}


int64_t stub_heap_blocks(void)
{
	return heap_blocks;
}


const char *mosquitto_client_id(const struct mosquitto *client)
{
	return client ? client->id : NULL;
}


const char *mosquitto_client_username(const struct mosquitto *client)
{
	return client ? client->username : NULL;
}


/* Identity mode (auth.c) is exercised with the real broker (tests/e2e/test_identity.py);
 * these only let the plugin load here. */
int mosquitto_set_username(struct mosquitto *client, const char *username)
{
	(void)client;
	(void)username;
	return MOSQ_ERR_NOT_SUPPORTED;
}


/* The certificate every client presents (stub_set_certificate), or none. */
static X509 *stub_cert;

void *mosquitto_client_certificate(const struct mosquitto *client)
{
	(void)client;
	if(stub_cert == NULL){
		return NULL;
	}
	X509_up_ref(stub_cert); /* the broker hands out a new reference */
	return stub_cert;
}


/* From now on every client presents this certificate (DER); NULL or 0: none.
 * The plugin reads it at a connection's first check (bench/check_cost.py). */
int stub_set_certificate(const unsigned char *der, int len)
{
	const unsigned char *p = der;

	X509_free(stub_cert);
	stub_cert = NULL;
	if(der == NULL || len <= 0){
		return 0;
	}
	stub_cert = d2i_X509(NULL, &p, len);
	return stub_cert != NULL ? 0 : -1;
}


const char *mosquitto_client_address(const struct mosquitto *client)
{
	(void)client;
	return "127.0.0.1";
}


int mosquitto_client_protocol_version(const struct mosquitto *client)
{
	(void)client;
	return 5;
}


int mosquitto_kick_client_by_username(const char *username, bool with_will)
{
	(void)with_will;
	kicks++;
	snprintf(last_kick, sizeof(last_kick), "%s", username ? username : "(null)");
	return MOSQ_ERR_SUCCESS;
}


int mosquitto_kick_client_by_clientid(const char *clientid, bool with_will)
{
	(void)with_will;
	kicks++;
	snprintf(last_kick, sizeof(last_kick), "%s", clientid ? clientid : "(null)");
	return MOSQ_ERR_SUCCESS;
}


/* The broker's strdup, on the counting allocator above. */
char *mosquitto_strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *copy = mosquitto_calloc(1, n);

	if(copy != NULL){
		memcpy(copy, s, n);
	}
	return copy;
}


/* ------------------------------------------------------------ test side */

int stub_registered(int event)
{
	return event >= 0 && event < STUB_EVENTS && callbacks[event].cb != NULL;
}


static int fire(int event, void *data)
{
	if(!stub_registered(event)){
		return -1000;
	}
	return callbacks[event].cb(event, data, callbacks[event].userdata);
}


int stub_acl_check(struct mosquitto *client, int access, const char *topic)
{
	struct mosquitto_evt_acl_check ed;

	memset(&ed, 0, sizeof(ed));
	ed.client = client;
	ed.topic = topic;
	ed.access = access;
	ed.qos = 1;
	return fire(MOSQ_EVT_ACL_CHECK, &ed);
}


int stub_disconnect(struct mosquitto *client)
{
	struct mosquitto_evt_disconnect ed;

	memset(&ed, 0, sizeof(ed));
	ed.client = client;
	ed.reason = -1;
	return fire(MOSQ_EVT_DISCONNECT, &ed);
}


/* What the plugin asked for in the last tick's data: the slot 2.0's header
 * calls next_ns is read by 2.1 as next_ms, the delay until the next tick. */
static long last_tick_request;

int stub_tick(void)
{
	struct mosquitto_evt_tick ed;
	int rc;

	memset(&ed, 0, sizeof(ed));
	rc = fire(MOSQ_EVT_TICK, &ed);
	last_tick_request = ed.next_ns;
	return rc;
}


long stub_tick_request(void)
{
	return last_tick_request;
}


int stub_log_count(void)
{
	return log_count;
}


const char *stub_log_line(int i)
{
	return i >= 0 && i < log_count ? log_lines[i] : NULL;
}


void stub_reset(void)
{
	int i;

	for(i = 0; i < log_count; i++){
		free(log_lines[i]);
		log_lines[i] = NULL;
	}
	log_count = 0;
	kicks = 0;
	last_kick[0] = '\0';
	stub_set_certificate(NULL, 0);
}


int stub_kicks(void)
{
	return kicks;
}


/* ------------------------------------------------------ for bench/shim_micro.py */

#include <time.h>

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}


/* n checks in a row, timed as a whole (no per-call FFI cost); returns ns. */
int64_t stub_acl_check_loop(struct mosquitto *client, int access, const char *topic, int n, int *allowed)
{
	int64_t t0 = now_ns();
	int i, ok = 0;

	for(i = 0; i < n; i++){
		ok += stub_acl_check(client, access, topic) == MOSQ_ERR_SUCCESS;
	}
	*allowed = ok;
	return now_ns() - t0;
}


/* n checks, each timed on its own into out_ns[i]. */
int stub_acl_check_timed(struct mosquitto *client, int access, const char *topic, int n, int64_t *out_ns)
{
	int i, ok = 0;

	for(i = 0; i < n; i++){
		int64_t t0 = now_ns();

		ok += stub_acl_check(client, access, topic) == MOSQ_ERR_SUCCESS;
		out_ns[i] = now_ns() - t0;
	}
	return ok;
}
