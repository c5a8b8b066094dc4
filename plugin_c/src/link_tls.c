#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "link_tls.h"

/* Certificates and keys are a few KiB; refuse anything that is clearly not one. */
#define PEM_MAX_BYTES (256 * 1024)


static char *read_pem(const char *path, const char **why)
{
	FILE *fh = fopen(path, "rb");
	char *buf;
	size_t n;

	if(fh == NULL){
		*why = "cannot open (is it readable by the mosquitto user?)";
		return NULL;
	}
	buf = malloc(PEM_MAX_BYTES + 1);
	if(buf == NULL){
		fclose(fh);
		*why = "out of memory";
		return NULL;
	}
	n = fread(buf, 1, PEM_MAX_BYTES + 1, fh);
	fclose(fh);
	buf[n <= PEM_MAX_BYTES ? n : PEM_MAX_BYTES] = '\0';
	if(n > PEM_MAX_BYTES || strstr(buf, "-----BEGIN ") == NULL){
		OPENSSL_cleanse(buf, n <= PEM_MAX_BYTES ? n : PEM_MAX_BYTES);
		free(buf);
		*why = n > PEM_MAX_BYTES ? "too large" : "not PEM";
		return NULL;
	}
	return buf;
}


const char *link_tls_load(struct link_tls *tls, const char *ca, const char *cert, const char *key,
		const char **path_out)
{
	const char *paths[3] = {ca, cert, key};
	char **slots[3] = {&tls->ca_pem, &tls->cert_pem, &tls->key_pem};
	const char *why = NULL;
	int i;

	memset(tls, 0, sizeof(*tls));
	*path_out = NULL;
	if(ca == NULL && cert == NULL && key == NULL){
		return NULL;
	}
	if(ca == NULL || cert == NULL || key == NULL){
		return "auth_opt_policyd_tls_ca, _tls_cert and _tls_key go together";
	}
	for(i = 0; i < 3; i++){
		*slots[i] = read_pem(paths[i], &why);
		if(*slots[i] == NULL){
			*path_out = paths[i];
			link_tls_free(tls);
			return why;
		}
	}
	return NULL;
}


int link_tls_enabled(const struct link_tls *tls)
{
	return tls != NULL && tls->ca_pem != NULL;
}


grpc_channel_credentials *link_tls_credentials(const struct link_tls *tls)
{
	grpc_ssl_pem_key_cert_pair pair;

	if(!link_tls_enabled(tls)){
		return grpc_insecure_credentials_create();
	}
	pair.private_key = tls->key_pem;
	pair.cert_chain = tls->cert_pem;
	return grpc_ssl_credentials_create(tls->ca_pem, &pair, NULL, NULL);
}


void link_tls_free(struct link_tls *tls)
{
	if(tls == NULL){
		return;
	}
	if(tls->key_pem){
		OPENSSL_cleanse(tls->key_pem, strlen(tls->key_pem));
	}
	free(tls->ca_pem);
	free(tls->cert_pem);
	free(tls->key_pem);
	memset(tls, 0, sizeof(*tls));
}


/* ---------------------------------------------------------------- channel */

/* Reconnect quickly after a daemon restart (gRPC core defaults take 5-9 s). */
#define USER_AGENT "mosquitto-policyd/0.1"
#define RECONNECT_INITIAL_MS 100
#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 1000


static grpc_arg int_arg(const char *key, int value)
{
	grpc_arg arg;

	arg.type = GRPC_ARG_INTEGER;
	arg.key = (char *)key;
	arg.value.integer = value;
	return arg;
}


static grpc_arg string_arg(const char *key, const char *value)
{
	grpc_arg arg;

	arg.type = GRPC_ARG_STRING;
	arg.key = (char *)key;
	arg.value.string = (char *)value;
	return arg;
}


grpc_channel *link_channel_create(const char *target, const struct link_tls *tls, int max_receive_bytes,
		int keepalive_ms)
{
	grpc_channel_credentials *creds;
	grpc_channel *channel;
	grpc_arg args[] = {
		int_arg(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, RECONNECT_INITIAL_MS),
		int_arg(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, RECONNECT_MIN_MS),
		int_arg(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, RECONNECT_MAX_MS),
		/* Fail fast: no transparent or configured retries, no service
		 * config from DNS that could turn them back on. */
		int_arg(GRPC_ARG_ENABLE_RETRIES, 0),
		int_arg(GRPC_ARG_SERVICE_CONFIG_DISABLE_RESOLUTION, 1),
		/* Keep the connection through quiet periods (default: drop it
		 * after 30 min idle, then pay a reconnect on the next check). */
		int_arg(GRPC_ARG_CLIENT_IDLE_TIMEOUT_MS, INT_MAX),
		/* Ping while idle too: a path that silently drops packets fails the
		 * connection (and the Watch stream on it) instead of looking alive. */
		int_arg(GRPC_ARG_KEEPALIVE_TIME_MS, keepalive_ms),
		int_arg(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, LINK_KEEPALIVE_TIMEOUT_MS),
		int_arg(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1),
		int_arg(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0),
		/* http_proxy/https_proxy in the broker's environment must not
		 * reroute ACL traffic. */
		int_arg(GRPC_ARG_ENABLE_HTTP_PROXY, 0),
		/* Our own subchannel: not shared with another plugin instance,
		 * nor between the checks' channel and the Watch stream. */
		int_arg(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1),
		int_arg(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, 1000),
		int_arg(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, max_receive_bytes),
		int_arg(GRPC_ARG_ENABLE_CHANNELZ, 0),
		string_arg(GRPC_ARG_PRIMARY_USER_AGENT_STRING, USER_AGENT),
		/* A target naming several daemons (ipv4:127.0.0.1:7001,127.0.0.1:7002,
		 * or a DNS name with several addresses) spreads checks over all of
		 * them: any daemon answers any check the same way. */
		string_arg(GRPC_ARG_LB_POLICY_NAME, "round_robin"),
	};
	grpc_channel_args channel_args = {
		.num_args = sizeof(args) / sizeof(args[0]),
		.args = args,
	};

	creds = link_tls_credentials(tls);
	if(creds == NULL){
		return NULL;
	}
	channel = grpc_channel_create(target, creds, &channel_args);
	grpc_channel_credentials_release(creds);
	return channel;
}
