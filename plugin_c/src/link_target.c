#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#include "link_target.h"

/* Longest host text considered (an IPv6 literal with a zone is < 64). */
#define HOST_MAX 256


static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}


static bool host_is_loopback(const char *host)
{
	struct in_addr v4;
	struct in6_addr v6;

	if(strcmp(host, "localhost") == 0){
		return true;
	}
	if(inet_pton(AF_INET, host, &v4) == 1){
		return (ntohl(v4.s_addr) >> 24) == 127;
	}
	if(inet_pton(AF_INET6, host, &v6) == 1){
		return IN6_IS_ADDR_LOOPBACK(&v6)
			|| (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
	}
	return false;
}


/* One address, "[v6]:port", "[v6]", "host:port" or "host" (len bytes). */
static bool address_is_loopback(const char *addr, size_t len)
{
	char host[HOST_MAX];
	const char *end;
	const char *colon;

	if(len == 0 || len >= HOST_MAX){
		return false;
	}
	if(addr[0] == '['){
		end = memchr(addr, ']', len);
		if(end == NULL || (end + 1 != addr + len && end[1] != ':')){
			return false;
		}
		len = (size_t)(end - addr - 1);
		addr++;
	}else{
		colon = memchr(addr, ':', len);
		if(colon != NULL){
			if(memchr(colon + 1, ':', len - (size_t)(colon + 1 - addr)) != NULL){
				return false; /* a bare IPv6 literal with a port is ambiguous: refuse */
			}
			len = (size_t)(colon - addr);
		}
	}
	if(len == 0){
		return false;
	}
	memcpy(host, addr, len);
	host[len] = '\0';
	return host_is_loopback(host);
}


bool link_target_is_local(const char *target)
{
	const char *p, *comma;

	if(target == NULL || target[0] == '\0'){
		return false;
	}
	if(starts_with(target, "unix:") || starts_with(target, "unix-abstract:")){
		return true;
	}
	p = target;
	if(starts_with(p, "ipv4:") || starts_with(p, "ipv6:")){
		p += 5;
	}else if(starts_with(p, "dns:")){
		p += 4;
		if(starts_with(p, "//")){
			/* dns://[authority]/host:port: an authority means a chosen DNS server */
			if(p[2] != '/'){
				return false;
			}
			p += 3;
		}
		return strchr(p, ',') == NULL && address_is_loopback(p, strlen(p));
	}else if(strchr(p, ':') != NULL && strstr(p, "://") != NULL){
		return false; /* some other scheme */
	}
	for(;;){
		comma = strchr(p, ',');
		if(!address_is_loopback(p, comma ? (size_t)(comma - p) : strlen(p))){
			return false;
		}
		if(comma == NULL){
			return true;
		}
		p = comma + 1;
	}
}
