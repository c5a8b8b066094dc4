/*
 * Many TLS MQTT clients from one process, for the broker benchmarks.
 *
 * One thread, one poll() over every client's socket, libmosquitto's
 * non-threaded API (loop_read / loop_write / loop_misc), so that the load
 * generator costs little CPU next to the broker on a two-core machine and
 * never runs one process per client. Each client has its own certificate
 * (<certdir>/<cn>.pem, .key); the TLS context is built before the clock
 * starts, so a storm times the broker's handshakes, not our file reads.
 *
 *   flood: an admin subscriber on /device/#, every device connected; one
 *          warm-up message per device, then "READY" on stdout; on a line on
 *          stdin the measured phase: --messages rounds, in each of which
 *          every device publishes one message into /device/<cn>/t and the
 *          admin receives the round before the next starts; then
 *          "DONE <delivered> <seconds>". A second stdin line disconnects.
 *   storm: every device connects at once (or, with --pending N, with at most
 *          N short of their CONNACK at any time), subscribes to /device/<cn>/#,
 *          publishes one QoS 1 message to /device/<cn>/t once the SUBACK
 *          is in, and waits for it to come back. Prints the wall time and
 *          per-device times from start to CONNACK and to the echo.
 *   hold:  every device connects (in batches) and publishes one QoS 1
 *          message (so the broker's ACL has seen it), then "READY"; on a
 *          line on stdin the clock starts and it waits, never reconnecting,
 *          until the broker has disconnected every device: "KICKED <n>
 *          <p50 seconds> <last seconds>" (times from that line).
 *
 * Built by the bench scripts into .bench/ (ignored), never shipped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <mosquitto.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct client {
	struct mosquitto *mosq;
	char cn[80];
	int index;
	bool started;              /* connect called */
	bool connected;
	bool subscribed;
	bool echoed;
	bool failed;
	bool gone;                 /* hold: disconnected by the broker, never reconnected */
	double t_gone;
	int acked;                 /* PUBACKs (QoS 1) or sends (QoS 0) done */
	double t_connack, t_echo;  /* seconds since the storm started */
	double t_sub, t_suback, t_pub, t_puback;
};

static struct {
	const char *host, *cafile, *certdir, *prefix, *mode;
	int port, devices, first, messages, qos;
	double timeout_s;
	int pending;               /* storm: most connections short of CONNACK at once; 0: all */
	int batch;                 /* flood: every K messages delivered before the next K are sent; 0: rounds */
} opt = {"127.0.0.1", NULL, NULL, "Device", "flood", 0, 100, 1, 50, 0, 600.0, 0, 0};

static struct client *clients;   /* devices, then (flood) the admin at [devices] */
static int client_count;
static long admin_received;
static double t_start;
static int failures;
static int retries;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *detail)
{
	fprintf(stderr, "loadgen: %s: %s\n", what, detail);
	exit(2);
}

static SSL_CTX *tls_context(const char *cn)
{
	char cert[512], key[512];
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if(!ctx) die("SSL_CTX_new", cn);
	snprintf(cert, sizeof(cert), "%s/%s.pem", opt.certdir, cn);
	snprintf(key, sizeof(key), "%s/%s.key", opt.certdir, cn);
	if(SSL_CTX_load_verify_locations(ctx, opt.cafile, NULL) != 1) die("CA file", opt.cafile);
	if(SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) die("certificate", cert);
	if(SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) die("key", key);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	return ctx;
}

static void on_connect(struct mosquitto *mosq, void *obj, int rc, int flags, const mosquitto_property *props)
{
	struct client *c = obj;
	char filter[128];
	(void)flags; (void)props;

	c->t_connack = now_s() - t_start;
	if(rc != 0){
		fprintf(stderr, "loadgen: %s: CONNACK %d\n", c->cn, rc);
		c->failed = true;
		failures++;
		return;
	}
	c->connected = true;
	if(strcmp(opt.mode, "storm") == 0){
		snprintf(filter, sizeof(filter), "/device/%s/#", c->cn);
		c->t_sub = now_s();
		if(mosquitto_subscribe(mosq, NULL, filter, 1) != MOSQ_ERR_SUCCESS) die("subscribe", c->cn);
	}else if(c->index == opt.devices){
		if(mosquitto_subscribe(mosq, NULL, "/device/#", opt.qos) != MOSQ_ERR_SUCCESS) die("subscribe", "admin");
	}
}

static void publish_own(struct client *c, int qos)
{
	char topic[128];

	snprintf(topic, sizeof(topic), "/device/%s/t", c->cn);
	if(mosquitto_publish(c->mosq, NULL, topic, 8, "payload!", qos, false) != MOSQ_ERR_SUCCESS){
		die("publish", c->cn);
	}
}

static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int count, const int *granted)
{
	struct client *c = obj;
	(void)mosq; (void)mid;

	if(count < 1 || granted[0] >= 0x80){
		fprintf(stderr, "loadgen: %s: SUBACK refused (%d)\n", c->cn, count ? granted[0] : -1);
		c->failed = true;
		failures++;
		return;
	}
	c->subscribed = true;
	c->t_suback = now_s();
	if(strcmp(opt.mode, "storm") == 0){
		c->t_pub = now_s();
		publish_own(c, 1);
	}
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg)
{
	struct client *c = obj;
	(void)mosq; (void)msg;

	if(strcmp(opt.mode, "storm") == 0){
		if(!c->echoed){
			c->echoed = true;
			c->t_echo = now_s() - t_start;
		}
	}else{
		admin_received++;
	}
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid, int rc, const mosquitto_property *props)
{
	struct client *c = obj;
	(void)mosq; (void)mid; (void)props;

	if(rc >= 0x80){
		fprintf(stderr, "loadgen: %s: PUBACK refused (%d)\n", c->cn, rc);
		c->failed = true;
		failures++;
	}
	c->acked++;
	if(!c->t_puback) c->t_puback = now_s();
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc, const mosquitto_property *props)
{
	struct client *c = obj;
	(void)mosq; (void)rc; (void)props;

	if(strcmp(opt.mode, "hold") != 0 || c->gone || !c->connected){
		return;   /* flood and storm disconnect only at their end; a failed connect is retried */
	}
	c->connected = false;
	c->gone = true;
	c->t_gone = now_s() - t_start;
}

static void client_init(struct client *c, int index, const char *cn)
{
	c->index = index;
	snprintf(c->cn, sizeof(c->cn), "%s", cn);
	c->mosq = mosquitto_new(NULL, true, c);
	if(!c->mosq) die("mosquitto_new", cn);
	mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
	/* Unlimited in flight: the load generator must not be the bottleneck. */
	mosquitto_max_inflight_messages_set(c->mosq, 0);
	/* Our context as it is: libmosquitto would otherwise want its own CA file and rebuild it. */
	mosquitto_int_option(c->mosq, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0);
	if(mosquitto_void_option(c->mosq, MOSQ_OPT_SSL_CTX, tls_context(cn)) != MOSQ_ERR_SUCCESS) die("SSL_CTX", cn);
	mosquitto_connect_v5_callback_set(c->mosq, on_connect);
	mosquitto_subscribe_callback_set(c->mosq, on_subscribe);
	mosquitto_message_callback_set(c->mosq, on_message);
	mosquitto_publish_v5_callback_set(c->mosq, on_publish);
	mosquitto_disconnect_v5_callback_set(c->mosq, on_disconnect);
}

static void client_connect(struct client *c)
{
	int rc = mosquitto_connect_async(c->mosq, opt.host, opt.port, 600);
	c->started = true;
	if(rc != MOSQ_ERR_SUCCESS) die("connect", mosquitto_strerror(rc));
}

static bool handshake_done(struct client *c)
{
	SSL *ssl = mosquitto_ssl_get(c->mosq);
	return ssl && SSL_is_init_finished(ssl);
}

/* One poll round over every client. Until its TLS handshake is finished a
 * client's queued CONNECT must not ask for POLLOUT (writing waits for the
 * handshake, so the socket would always be "ready"); loop_read drives the
 * handshake, in either direction. */
static void pump(struct pollfd *fds, int timeout_ms)
{
	int i;
	static double last_misc;

	for(i = 0; i < client_count; i++){
		struct client *c = &clients[i];
		int sock = mosquitto_socket(c->mosq);
		fds[i].fd = sock;
		fds[i].events = POLLIN;
		fds[i].revents = 0;
		if(sock < 0) continue;
		if(handshake_done(c)){
			if(mosquitto_want_write(c->mosq)) fds[i].events |= POLLOUT;
		}else{
			SSL *ssl = mosquitto_ssl_get(c->mosq);
			/* Also while the ClientHello is unsent: the first SSL_connect ran on a socket
			 * still connecting and may have stopped without asking to write. */
			if(ssl && (SSL_want_write(ssl) || SSL_get_state(ssl) == TLS_ST_BEFORE
					|| SSL_get_state(ssl) == TLS_ST_CW_CLNT_HELLO)){
				fds[i].events |= POLLOUT;
			}
		}
	}
	if(poll(fds, (nfds_t)client_count, timeout_ms) < 0 && errno != EINTR) die("poll", strerror(errno));
	for(i = 0; i < client_count; i++){
		struct client *c = &clients[i];
		if(fds[i].fd < 0 || !fds[i].revents) continue;
		if(!handshake_done(c)){
			mosquitto_loop_read(c->mosq, 1);
			if(handshake_done(c)) mosquitto_loop_write(c->mosq, 1);
			continue;
		}
		if(fds[i].revents & (POLLIN | POLLHUP | POLLERR)) mosquitto_loop_read(c->mosq, 1);
		if(fds[i].revents & POLLOUT) mosquitto_loop_write(c->mosq, 1000);
	}
	if(now_s() - last_misc > 1.0){
		last_misc = now_s();
		for(i = 0; i < client_count; i++){
			/* A handshake that waits for nothing we poll for is driven once a second; a
			 * connection the broker's full accept queue refused is tried again, as a device
			 * would (counted and reported). */
			if(!clients[i].started) continue;
			if(mosquitto_socket(clients[i].mosq) < 0 && !clients[i].connected && !clients[i].gone){
				retries++;
				mosquitto_reconnect_async(clients[i].mosq);
			}else if(!handshake_done(&clients[i])){
				mosquitto_loop_read(clients[i].mosq, 1);
			}
			mosquitto_loop_misc(clients[i].mosq);
		}
	}
}

typedef bool (*done_fn)(void);

static void pump_until(struct pollfd *fds, done_fn done, const char *what)
{
	double deadline = now_s() + opt.timeout_s;

	while(!done()){
		if(failures) die(what, "a client was refused (see above)");
		if(now_s() > deadline) die(what, "timed out");
		pump(fds, 50);
	}
}

static int count_where(bool (*pred)(const struct client *))
{
	int i, n = 0;
	for(i = 0; i < client_count; i++) n += pred(&clients[i]);
	return n;
}

static bool is_connected(const struct client *c) { return c->connected; }
static bool is_echoed(const struct client *c) { return c->echoed; }
static bool all_connected(void) { return count_where(is_connected) == client_count; }
static bool admin_subscribed(void) { return clients[opt.devices].subscribed; }
static bool all_echoed(void) { return count_where(is_echoed) == client_count; }

static long flood_expected;
static int acks_expected;        /* per device, warm-up included */
static bool flood_delivered(void)
{
	int i;
	if(admin_received < flood_expected) return false;
	if(opt.qos == 0) return true;
	for(i = 0; i < opt.devices; i++){
		if(clients[i].acked < acks_expected) return false;
	}
	return true;
}

static int lockstep_first, lockstep_device;
static bool message_delivered(void)
{
	int i;

	if(admin_received < flood_expected) return false;
	for(i = lockstep_first; i <= lockstep_device; i++){
		if(clients[i].acked < acks_expected) return false;
	}
	return true;
}

static void wait_line(void)
{
	char line[64];
	if(!fgets(line, sizeof(line), stdin)) die("stdin", "closed");
}

static void disconnect_all(struct pollfd *fds)
{
	int i;
	for(i = 0; i < client_count; i++) mosquitto_disconnect(clients[i].mosq);
	for(i = 0; i < 5; i++) pump(fds, 10);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double percentile(double *v, int n, double p)
{
	int k = (int)(p * (n - 1) + 0.5);
	return v[k];
}

static int run_flood(struct pollfd *fds)
{
	int i, m;
	double t0, took;

	for(i = 0; i < client_count; i++) client_connect(&clients[i]);
	pump_until(fds, all_connected, "connect");
	pump_until(fds, admin_subscribed, "admin subscribe");
	/* Warm-up: one message per device, so that every cache the broker has is filled. */
	flood_expected = opt.devices;
	acks_expected = 1;
	for(i = 0; i < opt.devices; i++) publish_own(&clients[i], opt.qos);
	if(opt.qos == 0){
		for(i = 0; i < opt.devices; i++) clients[i].acked = 1;
	}
	pump_until(fds, flood_delivered, "warm-up");
	printf("READY\n");
	fflush(stdout);
	wait_line();

	admin_received = 0;
	t0 = now_s();
	/* In rounds: every device one message, then until the admin has the round
	 * (and, QoS 1, every PUBACK); with --batch K, K messages at a time.
	 * Flooding instead lets the broker find a varying number of packets per
	 * read, which moves its instruction count per message by a few percent
	 * from run to run. */
	for(m = 0; m < opt.messages; m++){
		acks_expected = m + 2;
		for(i = 0; i < opt.devices; i++){
			publish_own(&clients[i], opt.qos);
			if(opt.qos == 0) clients[i].acked = m + 2;
			if(opt.batch > 0 && ((i + 1) % opt.batch == 0 || i + 1 == opt.devices)){
				flood_expected = (long)opt.devices * m + i + 1;
				lockstep_first = i + 1 - ((i + 1) % opt.batch ? (i + 1) % opt.batch : opt.batch);
				lockstep_device = i;
				pump_until(fds, message_delivered, "flood");
			}
		}
		flood_expected = (long)opt.devices * (m + 1);
		pump_until(fds, flood_delivered, "flood");
	}
	took = now_s() - t0;
	printf("DONE %ld %.6f\n", admin_received, took);
	fflush(stdout);
	wait_line();
	disconnect_all(fds);
	return 0;
}

static bool is_acked(const struct client *c) { return c->acked >= 1; }
static bool is_gone(const struct client *c) { return c->gone; }
static bool all_acked(void) { return count_where(is_acked) == client_count; }
static bool all_gone(void) { return count_where(is_gone) == client_count; }

static int run_hold(struct pollfd *fds)
{
	int i, batch, connecting = 0;
	double *gone;

	/* Batches keep the broker's accept queue from overflowing at 10,000 clients. */
	for(batch = 0; batch < client_count; batch += 250){
		for(i = batch; i < client_count && i < batch + 250; i++) client_connect(&clients[i]);
		connecting = i;
		while(count_where(is_connected) < connecting - 25){
			if(failures) die("connect", "a client was refused (see above)");
			pump(fds, 20);
		}
	}
	pump_until(fds, all_connected, "connect");
	for(i = 0; i < client_count; i++) publish_own(&clients[i], 1);
	pump_until(fds, all_acked, "one check each");
	printf("READY\n");
	fflush(stdout);
	wait_line();
	t_start = now_s();
	pump_until(fds, all_gone, "kicks");
	gone = calloc((size_t)client_count, sizeof(double));
	if(!gone) die("calloc", "hold");
	for(i = 0; i < client_count; i++) gone[i] = clients[i].t_gone;
	qsort(gone, (size_t)client_count, sizeof(double), cmp_double);
	printf("KICKED %d %.6f %.6f\n", client_count, percentile(gone, client_count, 0.5), gone[client_count - 1]);
	fflush(stdout);
	free(gone);
	return 0;
}

/* Storm: starts connections while fewer than --pending are short of their
 * CONNACK (all at once without it); done when every device has its echo. */
static int storm_started;
static bool storm_done(void)
{
	int connected = opt.pending > 0 ? count_where(is_connected) : 0;

	while(storm_started < client_count && (opt.pending <= 0 || storm_started - connected < opt.pending)){
		client_connect(&clients[storm_started++]);
	}
	return all_echoed();
}

static int run_storm(struct pollfd *fds)
{
	int i;
	double wall, *connack, *echo, *suback, *puback;

	t_start = now_s();
	pump_until(fds, storm_done, "storm");
	wall = now_s() - t_start;
	connack = calloc((size_t)client_count, sizeof(double));
	echo = calloc((size_t)client_count, sizeof(double));
	suback = calloc((size_t)client_count, sizeof(double));
	puback = calloc((size_t)client_count, sizeof(double));
	if(!connack || !echo || !suback || !puback) die("calloc", "storm");
	for(i = 0; i < client_count; i++){
		connack[i] = clients[i].t_connack;
		echo[i] = clients[i].t_echo;
		suback[i] = clients[i].t_suback - clients[i].t_sub;
		puback[i] = clients[i].t_puback - clients[i].t_pub;
	}
	qsort(connack, (size_t)client_count, sizeof(double), cmp_double);
	qsort(echo, (size_t)client_count, sizeof(double), cmp_double);
	qsort(suback, (size_t)client_count, sizeof(double), cmp_double);
	qsort(puback, (size_t)client_count, sizeof(double), cmp_double);
	/* SUBSCRIBE->SUBACK and PUBLISH->PUBACK: each one check, a miss under policyd. */
	printf("STORM wall=%.6f connack_p50=%.6f connack_max=%.6f echo_p50=%.6f echo_p99=%.6f "
	       "suback_p50=%.6f suback_p99=%.6f puback_p50=%.6f puback_p99=%.6f retries=%d\n", wall,
	       percentile(connack, client_count, 0.5), connack[client_count - 1],
	       percentile(echo, client_count, 0.5), percentile(echo, client_count, 0.99),
	       percentile(suback, client_count, 0.5), percentile(suback, client_count, 0.99),
	       percentile(puback, client_count, 0.5), percentile(puback, client_count, 0.99), retries);
	free(suback);
	free(puback);
	fflush(stdout);
	wait_line();
	disconnect_all(fds);
	free(connack);
	free(echo);
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: loadgen --port P --cafile CA --certdir DIR [--mode flood|storm|hold] [--devices N]\n"
	                "               [--first K] [--prefix Device] [--messages M] [--qos 0|1] [--timeout S]\n"
	                "               [--pending N] [--batch K]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int i, rc;
	struct pollfd *fds;
	char cn[80];

	for(i = 1; i + 1 < argc; i += 2){
		const char *k = argv[i], *v = argv[i + 1];
		if(!strcmp(k, "--host")) opt.host = v;
		else if(!strcmp(k, "--port")) opt.port = atoi(v);
		else if(!strcmp(k, "--cafile")) opt.cafile = v;
		else if(!strcmp(k, "--certdir")) opt.certdir = v;
		else if(!strcmp(k, "--mode")) opt.mode = v;
		else if(!strcmp(k, "--devices")) opt.devices = atoi(v);
		else if(!strcmp(k, "--first")) opt.first = atoi(v);
		else if(!strcmp(k, "--prefix")) opt.prefix = v;
		else if(!strcmp(k, "--messages")) opt.messages = atoi(v);
		else if(!strcmp(k, "--qos")) opt.qos = atoi(v);
		else if(!strcmp(k, "--timeout")) opt.timeout_s = atof(v);
		else if(!strcmp(k, "--pending")) opt.pending = atoi(v);
		else if(!strcmp(k, "--batch")) opt.batch = atoi(v);
		else usage();
	}
	if(i != argc || !opt.port || !opt.cafile || !opt.certdir || opt.devices < 1) usage();
	if(strcmp(opt.mode, "flood") && strcmp(opt.mode, "storm") && strcmp(opt.mode, "hold")) usage();

	mosquitto_lib_init();
	client_count = opt.devices + (strcmp(opt.mode, "flood") == 0 ? 1 : 0);
	clients = calloc((size_t)client_count, sizeof(*clients));
	fds = calloc((size_t)client_count, sizeof(*fds));
	if(!clients || !fds) die("calloc", "clients");
	for(i = 0; i < opt.devices; i++){
		snprintf(cn, sizeof(cn), "%s%d", opt.prefix, opt.first + i);
		client_init(&clients[i], i, cn);
	}
	if(client_count > opt.devices) client_init(&clients[opt.devices], opt.devices, "admin");

	if(strcmp(opt.mode, "storm") == 0) rc = run_storm(fds);
	else if(strcmp(opt.mode, "hold") == 0) rc = run_hold(fds);
	else rc = run_flood(fds);
	for(i = 0; i < client_count; i++) mosquitto_destroy(clients[i].mosq);
	mosquitto_lib_cleanup();
	free(clients);
	free(fds);
	return rc;
}
