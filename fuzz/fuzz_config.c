/*
 * libFuzzer target: plugin option parsing (config_parse) with arbitrary
 * `key=value` lines, as Mosquitto would pass auth_opt_* options. Must never
 * crash or leak, and a successful parse must leave values inside their
 * documented ranges.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "config.h"

/* The broker's logger: options problems are logged; here they go nowhere. */
void mosquitto_log_printf(int level, const char *fmt, ...)
{
	(void)level;
	(void)fmt;
}

#define MAX_OPTS 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mosquitto_opt opts[MAX_OPTS];
	struct policyd_config cfg;
	char *text, *line, *save = NULL, *eq;
	int n = 0;

	text = malloc(size + 1);
	if(text == NULL){
		return 0;
	}
	memcpy(text, data, size);
	text[size] = '\0';
	for(line = strtok_r(text, "\n", &save); line && n < MAX_OPTS; line = strtok_r(NULL, "\n", &save)){
		eq = strchr(line, '=');
		opts[n].key = line;
		opts[n].value = eq ? (*eq = '\0', eq + 1) : line + strlen(line);
		n++;
	}
	if(config_parse(&cfg, opts, n) == MOSQ_ERR_SUCCESS){
		if(cfg.address == NULL || cfg.timeout_ms < CONFIG_TIMEOUT_MS_MIN
				|| cfg.timeout_ms > CONFIG_TIMEOUT_MS_MAX || cfg.cache_size < 0
				|| cfg.breaker_threshold < 1){
			abort();
		}
		config_free(&cfg);
	}
	free(text);
	return 0;
}
