/*
 * Restricted codecs removed from SDP offers: formats, their rtpmap, fmtp
 * and rtcp-fb lines; static payload types named by RFC 3551; nothing
 * else touched; an audio line left without a codec is refused.
 */
#include <string.h>
#include <strings.h>

#include "t/unit/tap.h"
#include "worker/sdp.h"

static const char *banned[4];

static int restricted(void *arg, const char *name, size_t len)
{
	(void)arg;
	for (int i = 0; i < 4 && banned[i]; i++)
		if (strlen(banned[i]) == len && strncasecmp(banned[i], name, len) == 0)
			return 1;
	return 0;
}

static int filter(const char *in, char *out, size_t cap)
{
	size_t n = 0;
	int rc = sdp_filter_codecs(in, strlen(in), restricted, NULL, out, cap - 1, &n);

	out[rc == SDP_ERROR ? 0 : n] = '\0';
	return rc;
}

#define OFFER                                                                                                \
	"v=0\r\no=- 1 1 IN IP4 127.0.0.20\r\ns=-\r\nc=IN IP4 127.0.0.20\r\nt=0 0\r\n"                        \
	"m=audio 4000 RTP/AVP 18 0 8 101\r\n"                                                                \
	"a=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\na=rtpmap:0 PCMU/8000\r\n"                           \
	"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"

int main(void)
{
	char out[4096];
	int rc;

	banned[0] = NULL;
	rc = filter(OFFER, out, sizeof out);
	is_int(rc, SDP_UNCHANGED, "nothing restricted: unchanged");
	is_str(out, OFFER, "... byte for byte");

	banned[0] = "g729";
	rc = filter(OFFER, out, sizeof out);
	is_int(rc, SDP_CHANGED, "G729 restricted (any case): changed");
	ok(strstr(out, "m=audio 4000 RTP/AVP 0 8 101\r\n") != NULL, "... 18 gone from the m= line");
	ok(strstr(out, "G729") == NULL && strstr(out, "annexb") == NULL, "... with its rtpmap and fmtp");
	ok(strstr(out, "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n") != NULL,
	   "... the other attributes kept");
	ok(strncmp(out, "v=0\r\no=- 1 1 IN IP4 127.0.0.20\r\n", 30) == 0, "... the session part kept");

	banned[0] = "PCMA";
	rc = filter(OFFER, out, sizeof out);
	is_int(rc, SDP_CHANGED, "PCMA (static 8, no rtpmap) restricted: changed");
	ok(strstr(out, "m=audio 4000 RTP/AVP 18 0 101\r\n") != NULL, "... named by RFC 3551's table");

	banned[0] = "G729";
	banned[1] = "PCMU";
	banned[2] = "PCMA";
	rc = filter(OFFER, out, sizeof out);
	is_int(rc, SDP_NO_CODEC, "only telephone-event left: no codec (488)");

	banned[1] = banned[2] = NULL;
	banned[0] = "opus";
	rc = filter("v=0\r\nm=audio 5000 RTP/AVP 96 0\r\na=rtpmap:96 opus/48000/2\r\na=rtcp-fb:96 nack\r\n"
	            "m=video 5002 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\n",
	            out, sizeof out);
	is_int(rc, SDP_CHANGED, "a dynamic payload type by its rtpmap");
	is_str(out, "v=0\r\nm=audio 5000 RTP/AVP 0\r\nm=video 5002 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\n",
	       "... its rtcp-fb gone too; the video section untouched");

	rc = filter("v=0\nm=audio 5000 RTP/AVP 0 96\na=rtpmap:96 OPUS/48000\n", out, sizeof out);
	is_int(rc, SDP_CHANGED, "bare LF line ends");
	is_str(out, "v=0\nm=audio 5000 RTP/AVP 0\n", "... kept as LF");

	rc = filter("v=0\r\nm=image 5000 udptl t38\r\n", out, sizeof out);
	is_int(rc, SDP_UNCHANGED, "a non-RTP section (T.38) is left alone");

	banned[0] = "PCMU";
	rc = filter("v=0\r\nm=audio 5000 RTP/AVP 0\r\n", out, 10);
	is_int(rc, SDP_ERROR, "an output buffer too small: SDP_ERROR, not an overrun");
	return done_testing();
}
