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


/* A port: 1 to 5 digits, nothing else. */
static bool port_ok(const char *p, size_t len)
{
	size_t i;

	if(len == 0 || len > 5){
		return false;
	}
	for(i = 0; i < len; i++){
		if(p[i] < '0' || p[i] > '9'){
			return false;
		}
	}
	return true;
}


/* One address, "[v6]:port", "[v6]", "host:port" or "host" (len bytes). */
static bool address_is_loopback(const char *addr, size_t len)
{
	char host[HOST_MAX];
	const char *end;
	const char *colon;
	size_t host_len;

	if(len == 0 || len >= HOST_MAX){
		return false;
	}
	if(addr[0] == '['){
		end = memchr(addr, ']', len);
		if(end == NULL){
			return false;
		}
		if(end + 1 != addr + len && (end[1] != ':' || !port_ok(end + 2, (size_t)(addr + len - end - 2)))){
			return false;
		}
		host_len = (size_t)(end - addr - 1);
		addr++;
	}else{
		colon = memchr(addr, ':', len);
		host_len = len;
		if(colon != NULL){
			host_len = (size_t)(colon - addr);
			/* a bare IPv6 literal with a port is ambiguous, and anything else is not a port */
			if(!port_ok(colon + 1, len - host_len - 1)){
				return false;
			}
		}
	}
	if(host_len == 0){
		return false;
	}
	memcpy(host, addr, host_len);
	host[host_len] = '\0';
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
