/*
 * Is a gRPC target local to this host? Plaintext (no mutual TLS) is only
 * allowed to a local daemon: anyone on a network path could answer "allow".
 */
#ifndef POLICYD_LINK_TARGET_H
#define POLICYD_LINK_TARGET_H

#include <stdbool.h>

/* True for unix: and unix-abstract: targets, and for targets whose every
 * address is a loopback literal (127.0.0.0/8, ::1) or `localhost`, with or
 * without an ipv4:/ipv6:/dns: scheme. Anything unparsable is not local.
 * Pure: fuzz/ drives it with arbitrary bytes. */
bool link_target_is_local(const char *target);

#endif
