/*
 * Removing restricted codecs from an SDP offer (RFC 4566, RFC 3264), on
 * the text as sent: the m= format lists lose the payload types whose
 * encoding is restricted, and the a=rtpmap, a=fmtp and a=rtcp-fb lines of
 * those payload types go with them. Everything else is copied byte for
 * byte, so what tollgate does not understand it does not damage.
 *
 * An encoding is named by its a=rtpmap line, or for the static payload
 * types of RFC 3551 without one, by that table. telephone-event and CN
 * are not codecs: a media line left with only those has no codec.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "worker/sdp.h"

#define SDP_MAX_FMTS 64

/* RFC 3551 table 4: the static audio payload types still met in the wild. */
static const char *static_name(int pt)
{
	switch (pt) {
	case 0:
		return "PCMU";
	case 3:
		return "GSM";
	case 4:
		return "G723";
	case 8:
		return "PCMA";
	case 9:
		return "G722";
	case 13:
		return "CN";
	case 18:
		return "G729";
	default:
		return NULL;
	}
}

typedef struct line {
	const char *s;
	size_t len;  /* without the line end */
	size_t full; /* with it */
} line_t;

static int next_line(const char *buf, size_t len, size_t *pos, line_t *l)
{
	const char *nl;

	if (*pos >= len)
		return 0;
	l->s = buf + *pos;
	nl = memchr(l->s, '\n', len - *pos);
	l->full = nl ? (size_t)(nl - l->s) + 1 : len - *pos;
	l->len = l->full;
	if (l->len > 0 && l->s[l->len - 1] == '\n')
		l->len--;
	if (l->len > 0 && l->s[l->len - 1] == '\r')
		l->len--;
	*pos += l->full;
	return 1;
}

/* "a=rtpmap:96 opus/48000/2" with attr "rtpmap": the payload type, or -1. */
static int attr_pt(const line_t *l, const char *attr)
{
	size_t n = strlen(attr);
	char *end;
	long v;

	if (l->len < 3 + n || strncmp(l->s, "a=", 2) != 0 || strncasecmp(l->s + 2, attr, n) != 0 ||
	    l->s[2 + n] != ':')
		return -1;
	v = strtol(l->s + 3 + n, &end, 10);
	if (end == l->s + 3 + n || v < 0 || v > 127)
		return -1;
	return (int)v;
}

/* The encoding name in "a=rtpmap:PT NAME/rate": start and length. */
static int rtpmap_name(const line_t *l, const char **name, size_t *nlen)
{
	const char *p = memchr(l->s, ' ', l->len), *end = l->s + l->len, *q;

	if (p == NULL)
		return -1;
	while (p < end && *p == ' ')
		p++;
	for (q = p; q < end && *q != '/' && *q != ' '; q++)
		;
	*name = p;
	*nlen = (size_t)(q - p);
	return *nlen > 0 ? 0 : -1;
}

static void put(char *out, size_t cap, size_t *o, const char *s, size_t n, int *overflow)
{
	if (*o + n > cap) {
		*overflow = 1;
		return;
	}
	memcpy(out + *o, s, n);
	*o += n;
}

/* One media section: [start, end) of the body, its m= line first. */
typedef struct section {
	size_t start, end;
	int pts[SDP_MAX_FMTS];
	int npts;
	char drop[SDP_MAX_FMTS]; /* 1: restricted */
	int codecs_left;         /* formats kept that are codecs */
	int audio;
} section_t;

static int is_codec(const char *name, size_t n)
{
	return !(n == 15 && strncasecmp(name, "telephone-event", 15) == 0) &&
	       !(n == 2 && strncasecmp(name, "CN", 2) == 0);
}

/* Decide for each format of a section; returns -1 when its m= line cannot be read. */
static int judge(const char *buf, section_t *sec, sdp_restricted_fn restricted, void *arg)
{
	size_t pos = sec->start;
	line_t m, l;
	const char *p, *end;
	int field = 0;

	next_line(buf, sec->end, &pos, &m);
	sec->audio = m.len >= 8 && strncmp(m.s, "m=audio ", 8) == 0;
	/* m=<media> <port> <proto> <fmt> ... */
	sec->npts = 0;
	for (p = m.s + 2, end = m.s + m.len; p < end;) {
		const char *w;

		while (p < end && *p == ' ')
			p++;
		for (w = p; p < end && *p != ' '; p++)
			;
		if (p == w)
			break;
		if (++field <= 3)
			continue;
		if (sec->npts == SDP_MAX_FMTS)
			return -1;
		{
			char *e;
			long v = strtol(w, &e, 10);
			if (e != p || v < 0 || v > 127)
				return -1; /* not RTP/AVP numbers: leave the section alone */
			sec->pts[sec->npts] = (int)v;
			sec->drop[sec->npts] = 0;
			sec->npts++;
		}
	}
	sec->codecs_left = 0;
	for (int i = 0; i < sec->npts; i++) {
		const char *name = static_name(sec->pts[i]);
		size_t nlen = name ? strlen(name) : 0;

		pos = sec->start;
		next_line(buf, sec->end, &pos, &l);
		while (next_line(buf, sec->end, &pos, &l))
			if (attr_pt(&l, "rtpmap") == sec->pts[i] && rtpmap_name(&l, &name, &nlen) == 0)
				break;
		if (name != NULL && restricted(arg, name, nlen))
			sec->drop[i] = 1;
		else if (name == NULL || is_codec(name, nlen))
			sec->codecs_left++;
	}
	return 0;
}

static int dropped(const section_t *sec, int pt)
{
	for (int i = 0; i < sec->npts; i++)
		if (sec->pts[i] == pt)
			return sec->drop[i];
	return 0;
}

int sdp_filter_codecs(const char *buf, size_t len, sdp_restricted_fn restricted, void *arg, char *out,
                      size_t cap, size_t *outlen)
{
	size_t pos = 0, o = 0;
	line_t l;
	int changed = 0, overflow = 0, no_codec = 0;
	section_t sec = {0};
	int in_media = 0;

	while (next_line(buf, len, &pos, &l)) {
		size_t lstart = pos - l.full;

		if (l.len >= 2 && strncmp(l.s, "m=", 2) == 0) {
			/* a new section: find its end */
			size_t p2 = pos;
			line_t n;

			sec.start = lstart;
			sec.end = len;
			while (next_line(buf, len, &p2, &n))
				if (n.len >= 2 && strncmp(n.s, "m=", 2) == 0) {
					sec.end = p2 - n.full;
					break;
				}
			in_media = judge(buf, &sec, restricted, arg) == 0;
			if (!in_media) {
				put(out, cap, &o, l.s, l.full, &overflow);
				continue;
			}
			if (sec.audio && sec.codecs_left == 0)
				no_codec = 1;
			/* the m= line again, without the dropped formats */
			{
				const char *p = l.s + 2, *end = l.s + l.len;
				int field = 0, fi = 0;

				put(out, cap, &o, "m=", 2, &overflow);
				for (int first = 1; p < end;) {
					const char *w;

					while (p < end && *p == ' ')
						p++;
					for (w = p; p < end && *p != ' '; p++)
						;
					if (p == w)
						break;
					if (++field > 3 && sec.drop[fi++]) {
						changed = 1;
						continue;
					}
					if (!first)
						put(out, cap, &o, " ", 1, &overflow);
					put(out, cap, &o, w, (size_t)(p - w), &overflow);
					first = 0;
				}
				put(out, cap, &o, l.s + l.len, l.full - l.len, &overflow);
			}
			continue;
		}
		if (in_media) {
			int pt = attr_pt(&l, "rtpmap");

			if (pt < 0)
				pt = attr_pt(&l, "fmtp");
			if (pt < 0)
				pt = attr_pt(&l, "rtcp-fb");
			if (pt >= 0 && dropped(&sec, pt)) {
				changed = 1;
				continue;
			}
		}
		put(out, cap, &o, l.s, l.full, &overflow);
	}
	if (overflow)
		return SDP_ERROR;
	*outlen = o;
	if (no_codec)
		return SDP_NO_CODEC;
	return changed ? SDP_CHANGED : SDP_UNCHANGED;
}
