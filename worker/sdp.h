/*
 * Restricted codecs out of an SDP offer; see sdp.c.
 */
#ifndef TG_SDP_H
#define TG_SDP_H

#include <stddef.h>

enum sdp_result {
	SDP_UNCHANGED, /* nothing restricted was offered; out holds a copy */
	SDP_CHANGED,   /* formats were removed; out holds the new body */
	SDP_NO_CODEC,  /* an audio line would be left with no codec (only DTMF or CN, or nothing): 488 */
	SDP_ERROR,     /* out too small */
};

/* 1 when the encoding name (len bytes, any case) is restricted. */
typedef int (*sdp_restricted_fn)(void *arg, const char *name, size_t len);

/* Filter buf (len bytes) into out (cap bytes); *outlen is its length unless SDP_ERROR. */
int sdp_filter_codecs(const char *buf, size_t len, sdp_restricted_fn restricted, void *arg, char *out,
                      size_t cap, size_t *outlen);

#endif
