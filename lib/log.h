/*
 * One log API for every process: JSON lines, one event each.
 *
 *   {"ts":"2026-11-24T08:30:00.123Z","level":"info","proc":"worker 1",
 *    "event":"request_refused","src":"127.0.0.2:5060","reason":"unknown_source"}
 *
 * Fields are given as a tiny format string of "key=%X" pairs separated by
 * spaces: "src=%s port=%d". Supported conversions: %s (JSON-escaped, NULL
 * prints null), %.*s (int length, then char *), %d, %u, %ld, %lu, %lld,
 * %llu, %zu, %f (double). Values of %d..%zu
 * are JSON numbers.
 *
 * Pairs that differ only in errno: log_warn() appends "errno" and "error"
 * (strerror) fields, log_warnx() does not; likewise fatal()/fatalx(), which
 * exit with status 2 (a child exiting 2 is not respawned).
 *
 * Each line is written with one write(2) on an O_APPEND descriptor, so lines
 * from several processes sharing a file never interleave.
 */
#ifndef TG_LOG_H
#define TG_LOG_H

#include <stdarg.h>

enum tg_log_level {
	TG_LOG_DEBUG,
	TG_LOG_INFO,
	TG_LOG_NOTICE,
	TG_LOG_WARN,
	TG_LOG_ERROR,
	TG_LOG_ALERT,
};

/* path "-" means stdout. Returns 0, or -1 with errno when the file cannot be opened. */
int tg_log_open(const char *path);
/* Reopen the current path (SIGUSR1, logrotate). */
int tg_log_reopen(void);
void tg_log_set_proc(const char *proc);
const char *tg_log_proc(void);
void tg_log_set_level(int level);
int tg_log_get_level(void);
/* "debug".."alert" -> level, or -1. */
int tg_log_level_parse(const char *name);
const char *tg_log_level_name(int level);
int tg_log_enabled(int level);

void tg_log(int level, int with_errno, const char *event, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
void tg_vlog(int level, int with_errno, const char *event, const char *fmt, va_list ap);

#define log_debug(ev, ...)  tg_log(TG_LOG_DEBUG, 0, ev, __VA_ARGS__)
#define log_info(ev, ...)   tg_log(TG_LOG_INFO, 0, ev, __VA_ARGS__)
#define log_notice(ev, ...) tg_log(TG_LOG_NOTICE, 0, ev, __VA_ARGS__)
#define log_warn(ev, ...)   tg_log(TG_LOG_WARN, 1, ev, __VA_ARGS__)
#define log_warnx(ev, ...)  tg_log(TG_LOG_WARN, 0, ev, __VA_ARGS__)
#define log_error(ev, ...)  tg_log(TG_LOG_ERROR, 1, ev, __VA_ARGS__)
#define log_errorx(ev, ...) tg_log(TG_LOG_ERROR, 0, ev, __VA_ARGS__)
#define log_alert(ev, ...)  tg_log(TG_LOG_ALERT, 0, ev, __VA_ARGS__)

void fatal(const char *event, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
void fatalx(const char *event, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));

#endif
