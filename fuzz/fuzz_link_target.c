/*
 * libFuzzer target: link_target_is_local() over arbitrary target text.
 * Properties: never reads past the string, and a target with any character
 * that cannot appear in a loopback target (outside a unix: path) is never
 * called local; prefixing a non-loopback address keeps a list non-local.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "link_target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *target = malloc(size + 1);
	char *mixed;

	if(target == NULL){
		return 0;
	}
	memcpy(target, data, size);
	target[size] = '\0';
	(void)link_target_is_local(target);
	if(strncmp(target, "unix", 4) != 0 && strchr(target, '@') != NULL && link_target_is_local(target)){
		abort(); /* userinfo-like text is never a loopback address */
	}
	mixed = malloc(size + 32);
	if(mixed != NULL){
		memcpy(mixed, "ipv4:10.0.0.1:1,", 16);
		memcpy(mixed + 16, target, size + 1);
		if(link_target_is_local(mixed)){
			abort(); /* one remote address makes the whole list remote */
		}
		free(mixed);
	}
	free(target);
	return 0;
}
