/*
 * JSON-lines logging shared by every process.
 *
 * Owns the log descriptor of the calling process and nothing else: each
 * process (master, loader, workers) opens the file itself, so SIGUSR1 can
 * reopen it everywhere after logrotate. A line is built in a stack buffer
 * and written with one write(2); an over-long value is cut and the line
 * says "truncated":true rather than being split or lost.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"

#define LOG_LINE_MAX 8192

static int log_fd = STDOUT_FILENO;
static char log_path[PATH_MAX] = "-";
static char log_procname[32] = "tollgate";
static int log_level = TG_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "notice", "warn", "error", "alert"};

typedef struct jbuf {
	char *p;
	size_t cap; /* bytes usable, room for the closing "}\n" kept aside */
	size_t len;
	int truncated;
} jbuf_t;

static void jb_raw(jbuf_t *b, const char *s, size_t n)
{
	if (b->len + n > b->cap) {
		n = b->cap - b->len;
		b->truncated = 1;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void jb_str(jbuf_t *b, const char *s)
{
	jb_raw(b, s, strlen(s));
}

/* A JSON string; bytes outside printable ASCII are escaped so the line is valid whatever a peer sent. */
static void jb_quoted(jbuf_t *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	char esc[6] = {'\\', 'u', '0', '0', 0, 0};

	jb_raw(b, "\"", 1);
	for (size_t i = 0; i < n && !b->truncated; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\') {
			char two[2] = {'\\', (char)c};
			jb_raw(b, two, 2);
		} else if (c < 0x20 || c >= 0x7f) {
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 15];
			jb_raw(b, esc, 6);
		} else {
			jb_raw(b, (const char *)&s[i], 1);
		}
	}
	if (b->len + 1 > b->cap) {
		b->truncated = 1; /* the caller drops the whole field */
		return;
	}
	b->p[b->len++] = '"';
}

static void jb_fmt(jbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void jb_fmt(jbuf_t *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(b->p + b->len, b->cap - b->len + 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > b->cap - b->len) {
		b->len = b->cap;
		b->truncated = 1;
	} else {
		b->len += (size_t)n;
	}
}

/* One "key=%X" conversion; returns the format position after it. */
static const char *jb_field_write(jbuf_t *b, const char *f, va_list *ap)
{
	const char *key = f;
	const char *eq = strchr(f, '=');

	if (eq == NULL || eq[1] != '%')
		return f + strlen(f); /* a malformed format is a bug; stop rather than guess */
	jb_raw(b, ",", 1);
	jb_quoted(b, key, (size_t)(eq - key));
	jb_raw(b, ":", 1);
	f = eq + 2;
	if (strncmp(f, ".*s", 3) == 0) {
		int n = va_arg(*ap, int);
		const char *s = va_arg(*ap, const char *);
		if (s == NULL)
			jb_str(b, "null");
		else
			jb_quoted(b, s, n < 0 ? 0 : (size_t)n);
		return f + 3;
	}
	if (*f == 's') {
		const char *s = va_arg(*ap, const char *);
		if (s == NULL)
			jb_str(b, "null");
		else
			jb_quoted(b, s, strlen(s));
		return f + 1;
	}
	if (*f == 'd') {
		jb_fmt(b, "%d", va_arg(*ap, int));
		return f + 1;
	}
	if (*f == 'u') {
		jb_fmt(b, "%u", va_arg(*ap, unsigned));
		return f + 1;
	}
	if (*f == 'f') {
		jb_fmt(b, "%.3f", va_arg(*ap, double));
		return f + 1;
	}
	if (strncmp(f, "zu", 2) == 0) {
		jb_fmt(b, "%zu", va_arg(*ap, size_t));
		return f + 2;
	}
	if (strncmp(f, "lld", 3) == 0) {
		jb_fmt(b, "%lld", va_arg(*ap, long long));
		return f + 3;
	}
	if (strncmp(f, "llu", 3) == 0) {
		jb_fmt(b, "%llu", va_arg(*ap, unsigned long long));
		return f + 3;
	}
	if (strncmp(f, "ld", 2) == 0) {
		jb_fmt(b, "%ld", va_arg(*ap, long));
		return f + 2;
	}
	if (strncmp(f, "lu", 2) == 0) {
		jb_fmt(b, "%lu", va_arg(*ap, unsigned long));
		return f + 2;
	}
	return f + strlen(f);
}

/*
 * A field that does not fit whole is dropped whole: cutting a value could
 * split an escape (\u00XX) and leave a line that is not JSON. The line then
 * ends with "truncated":true.
 */
static const char *jb_field(jbuf_t *b, const char *f, va_list *ap)
{
	size_t mark = b->len;
	const char *next = jb_field_write(b, f, ap);

	if (b->truncated)
		b->len = mark;
	return next;
}

static void jb_timestamp(jbuf_t *b)
{
	struct timespec ts;
	struct tm tm;
	char t[32];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(t, sizeof(t), "%Y-%m-%dT%H:%M:%S", &tm);
	jb_fmt(b, "{\"ts\":\"%s.%03ldZ\"", t, ts.tv_nsec / 1000000L);
}

void tg_vlog(int level, int with_errno, const char *event, const char *fmt, va_list ap)
{
	char line[LOG_LINE_MAX];
	jbuf_t b = {line, sizeof(line) - 24, 0, 0};
	int saved = errno;
	va_list aq;

	if (level < log_level)
		return;
	jb_timestamp(&b);
	jb_fmt(&b, ",\"level\":\"%s\",\"proc\":", tg_log_level_name(level));
	jb_quoted(&b, log_procname, strlen(log_procname));
	jb_str(&b, ",\"event\":");
	jb_quoted(&b, event, strlen(event));
	va_copy(aq, ap);
	for (const char *f = fmt; f != NULL && *f != '\0' && !b.truncated;) {
		while (*f == ' ')
			f++;
		if (*f != '\0')
			f = jb_field(&b, f, &aq);
	}
	va_end(aq);
	if (with_errno && !b.truncated) {
		size_t mark = b.len;

		jb_fmt(&b, ",\"errno\":%d,\"error\":", saved);
		jb_quoted(&b, strerror(saved), strlen(strerror(saved)));
		if (b.truncated)
			b.len = mark;
	}
	/* room for this tail was kept out of cap */
	b.cap = sizeof(line);
	if (b.truncated)
		jb_str(&b, ",\"truncated\":true");
	jb_str(&b, "}\n");
	while (write(log_fd, line, b.len) < 0 && errno == EINTR)
		;
	errno = saved;
}

void tg_log(int level, int with_errno, const char *event, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	tg_vlog(level, with_errno, event, fmt, ap);
	va_end(ap);
}

static void vfatal(int with_errno, const char *event, const char *fmt, va_list ap) __attribute__((noreturn));
static void vfatal(int with_errno, const char *event, const char *fmt, va_list ap)
{
	tg_vlog(TG_LOG_ERROR, with_errno, event, fmt, ap);
	_exit(2);
}

void fatal(const char *event, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfatal(1, event, fmt, ap);
	va_end(ap);
}

void fatalx(const char *event, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfatal(0, event, fmt, ap);
	va_end(ap);
}

static int open_path(const char *path)
{
	if (strcmp(path, "-") == 0)
		return STDOUT_FILENO;
	return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
}

int tg_log_open(const char *path)
{
	int fd = open_path(path);

	if (fd < 0)
		return -1;
	if (log_fd != STDOUT_FILENO && log_fd != fd)
		close(log_fd);
	log_fd = fd;
	snprintf(log_path, sizeof(log_path), "%s", path);
	return 0;
}

int tg_log_reopen(void)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s", log_path);
	return tg_log_open(path);
}

void tg_log_set_proc(const char *proc)
{
	snprintf(log_procname, sizeof(log_procname), "%s", proc);
}

const char *tg_log_proc(void)
{
	return log_procname;
}

void tg_log_set_level(int level)
{
	if (level >= TG_LOG_DEBUG && level <= TG_LOG_ALERT)
		log_level = level;
}

int tg_log_get_level(void)
{
	return log_level;
}

int tg_log_enabled(int level)
{
	return level >= log_level;
}

int tg_log_level_parse(const char *name)
{
	for (int i = TG_LOG_DEBUG; i <= TG_LOG_ALERT; i++)
		if (strcmp(name, level_names[i]) == 0)
			return i;
	return -1;
}

const char *tg_log_level_name(int level)
{
	if (level < TG_LOG_DEBUG || level > TG_LOG_ALERT)
		return "unknown";
	return level_names[level];
}
