/*
 * Replies tollgate makes itself (403, 400, 483, ...). They always go back
 * to the address and port the request came from, never to an address
 * taken from the message, so a forged Via cannot aim them at a third
 * party. The To tag is derived from the request, so a retransmission gets
 * the same reply.
 */
#include <osipparser2/osip_parser.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "lib/log.h"
#include "lib/siphash.h"
#include "worker/worker.h"

#define RAW_REPLY_MAX 4096

/* The To tag of our replies to req: the same for its retransmissions, its ACK and its CANCEL. */
static void our_tag(const worker_t *w, osip_message_t *req, char *hex, size_t len)
{
	char in[512];
	int n;

	n = snprintf(in, sizeof(in), "%s|%s", sip_call_id(req) ? sip_call_id(req) : "",
	             req->cseq && req->cseq->number ? req->cseq->number : "");
	if (n < 0 || (size_t)n >= sizeof(in))
		n = sizeof(in) - 1;
	snprintf(hex, len, "tg%016llx",
	         (unsigned long long)tg_siphash(w->c->shm->hdr->secret + 16, in, (size_t)n));
}

int reply_tag_is_ours(const worker_t *w, osip_message_t *req, const char *tag)
{
	char hex[24];

	our_tag(w, req, hex, sizeof hex);
	return tag != NULL && strcmp(tag, hex) == 0;
}

static void add_to_tag(worker_t *w, osip_message_t *req, osip_to_t *to)
{
	osip_generic_param_t *tag = NULL;
	char hex[24];

	if (osip_to_get_tag(to, &tag) == 0 && tag != NULL)
		return;
	our_tag(w, req, hex, sizeof hex);
	osip_to_set_tag(to, osip_strdup(hex));
}

static int copy_headers(worker_t *w, osip_message_t *req, osip_message_t *resp, int code)
{
	for (int i = 0; i < osip_list_size(&req->vias); i++) {
		osip_via_t *v = osip_list_get(&req->vias, i), *copy = NULL;
		if (osip_via_clone(v, &copy) != 0)
			return -1;
		osip_list_add(&resp->vias, copy, -1);
	}
	if (req->from && osip_from_clone(req->from, &resp->from) != 0)
		return -1;
	if (req->to && osip_to_clone(req->to, &resp->to) != 0)
		return -1;
	if (resp->to && code > 100)
		add_to_tag(w, req, resp->to);
	if (req->call_id && osip_call_id_clone(req->call_id, &resp->call_id) != 0)
		return -1;
	if (req->cseq && osip_cseq_clone(req->cseq, &resp->cseq) != 0)
		return -1;
	return 0;
}

void reply_send(worker_t *w, const pkt_t *p, osip_message_t *req, int code, const char *reason)
{
	reply_send_headers(w, p, req, code, reason, NULL, NULL, 0);
}

void reply_send_headers(worker_t *w, const pkt_t *p, osip_message_t *req, int code, const char *reason,
                        const char *const *names, const char *const *values, int n)
{
	osip_message_t *resp = NULL;
	char *out = NULL;
	size_t outlen = 0;

	if (osip_message_init(&resp) != 0)
		return;
	osip_message_set_version(resp, osip_strdup("SIP/2.0"));
	osip_message_set_status_code(resp, code);
	osip_message_set_reason_phrase(resp, osip_strdup(reason));
	if (copy_headers(w, req, resp, code) == 0) {
		for (int i = 0; i < n; i++)
			osip_message_set_header(resp, names[i], values[i]);
		osip_message_set_header(resp, "Server", w->c->cfg.server_name);
		osip_message_set_content_length(resp, "0");
		if (osip_message_to_str(resp, &out, &outlen) == 0 && out != NULL)
			worker_send(w, p->lidx, (const struct sockaddr *)&p->src, p->srclen, out, outlen);
	}
	osip_free(out);
	osip_message_free(resp);
}

/* The header names, long and compact (RFC 3261 7.3.3), a 400 must echo. */
static int echo_header(const char *line, size_t n)
{
	static const char *const names[] = {"via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"};
	const char *colon = memchr(line, ':', n);
	size_t nl;

	if (colon == NULL)
		return 0;
	nl = (size_t)(colon - line);
	while (nl > 0 && (line[nl - 1] == ' ' || line[nl - 1] == '\t'))
		nl--;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strlen(names[i]) == nl && strncasecmp(line, names[i], nl) == 0)
			return names[i][0] == 'v' ? 2 : 1;
	return 0;
}

int reply_raw_400(worker_t *w, const pkt_t *p, const char *why)
{
	char out[RAW_REPLY_MAX];
	size_t len = 0;
	int have_via = 0, n;
	const char *s = p->buf, *end = p->buf + p->len;

	/* a response, an ACK (never answered, RFC 3261 17.1.1.1), or not even a request line */
	if (p->len < 8 || strncmp(s, "SIP/", 4) == 0 || strncmp(s, "ACK ", 4) == 0 ||
	    memchr(s, '\n', p->len) == NULL)
		return 0;
	n = snprintf(out, sizeof(out), "SIP/2.0 400 Bad Request\r\n");
	len = (size_t)n;
	s = (const char *)memchr(s, '\n', p->len) + 1;
	while (s < end) {
		const char *eol = memchr(s, '\n', (size_t)(end - s));
		size_t ln = eol ? (size_t)(eol - s) : (size_t)(end - s);
		size_t clean = (ln > 0 && s[ln - 1] == '\r') ? ln - 1 : ln;
		int kind;

		if (clean == 0)
			break; /* end of headers */
		kind = echo_header(s, clean);
		if (kind && len + clean + 2 < sizeof(out) - 128) {
			memcpy(out + len, s, clean);
			len += clean;
			memcpy(out + len, "\r\n", 2);
			len += 2;
			have_via |= kind == 2;
		}
		if (eol == NULL)
			break;
		s = eol + 1;
	}
	if (!have_via)
		return 0;
	n = snprintf(out + len, sizeof(out) - len,
	             "Server: %s\r\nWarning: 399 tollgate \"%s\"\r\nContent-Length: 0\r\n\r\n",
	             w->c->cfg.server_name, why);
	if (n < 0 || (size_t)n >= sizeof(out) - len)
		return 0;
	len += (size_t)n;
	return worker_send(w, p->lidx, (const struct sockaddr *)&p->src, p->srclen, out, len) == 0;
}
