/*
 * libFuzzer target: arbitrary bytes as a CheckAclResponse from the daemon
 * (protobuf-c unpack + the result mapping of policy_client.c). Whatever the
 * bytes, the result must be one of allow / deny / a protocol error, and its
 * strings must stay inside their buffers.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy_client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct policy_check_result result;

	memset(&result, 0x5a, sizeof(result));  /* stale garbage must not leak through */
	policy_response_decode(data, size, &result);
	switch(result.outcome){
		case POLICY_ALLOW:
		case POLICY_DENY:
			if(result.error != POLICY_ERR_NONE){
				abort();
			}
			break;
		case POLICY_ERROR:
			if(result.error != POLICY_ERR_PROTOCOL || result.cache_scope_len != 0){
				abort();
			}
			break;
		default:
			abort();
	}
	if(memchr(result.rule, '\0', sizeof(result.rule)) == NULL
			|| result.cache_scope_len > sizeof(result.cache_scope)){
		abort();
	}
	return 0;
}
