/*
 * Every log line is one valid JSON object, whatever a peer put in a field
 * and however long it is: a field that does not fit is dropped whole and
 * the line says "truncated":true.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/log.h"
#include "t/unit/tap.h"

/* Structural check: escapes complete, quotes balanced, one object per line. */
static int json_line_ok(const char *s, size_t n)
{
	int in_str = 0;

	if (n < 3 || s[0] != '{' || s[n - 1] != '\n' || s[n - 2] != '}')
		return 0;
	for (size_t i = 0; i < n - 1; i++) {
		unsigned char c = (unsigned char)s[i];
		if (in_str && c == '\\') {
			char e = s[i + 1];
			if (e == 'u') {
				for (int k = 2; k < 6; k++)
					if (i + (size_t)k >= n || !isxdigit((unsigned char)s[i + (size_t)k]))
						return 0;
				i += 5;
			} else if (strchr("\"\\/bfnrt", e) != NULL && e != '\0') {
				i++;
			} else {
				return 0;
			}
		} else if (c == '"') {
			in_str = !in_str;
		} else if (in_str && (c < 0x20 || c >= 0x7f)) {
			return 0;
		}
	}
	return !in_str;
}

int main(void)
{
	char path[] = "/tmp/tollgate-test-log.XXXXXX";
	int fd = mkstemp(path);
	static char big[20000];
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int lines = 0, bad = 0, truncated = 0;
	FILE *f;

	ok(fd >= 0 && tg_log_open(path) == 0, "log to a temp file");
	tg_log_set_proc("test");
	/* around the line limit, every length: escapes (6 bytes each) land on every cut position */
	memset(big, 0x80, sizeof(big) - 1);
	for (int len = 7900; len < 8300; len++)
		tg_log(TG_LOG_NOTICE, 0, "request_refused", "src=%s call_id=%.*s reason=%s", "127.0.0.2:5060",
		       len, big, "unknown_source");
	memset(big, '"', sizeof(big) - 1);
	for (int len = 3950; len < 4150; len++)
		tg_log(TG_LOG_NOTICE, 1, "quotes", "v=%.*s", len, big);
	tg_log(TG_LOG_INFO, 0, "small", "a=%s b=%d c=%llu d=%s", "x\ny\"z\\", -3, 18446744073709551615ULL,
	       getenv("TOLLGATE_TEST_UNSET_VARIABLE"));
	f = fopen(path, "r");
	while (f != NULL && (n = getline(&line, &cap, f)) > 0) {
		lines++;
		if (!json_line_ok(line, (size_t)n) && bad++ == 0)
			printf("# bad line: %.*s ... %s", 120, line, n > 200 ? line + n - 80 : "");
		truncated += strstr(line, "\"truncated\":true}") != NULL;
	}
	is_int(lines, 601, "one line per event");
	is_int(bad, 0, "every line is structurally valid JSON");
	ok(truncated > 300, "over-long fields are dropped and the line says truncated (%d)", truncated);
	ok(line != NULL &&
	           strstr(line,
	                  "\"a\":\"x\\u000ay\\\"z\\\\\",\"b\":-3,\"c\":18446744073709551615,\"d\":null") !=
	                   NULL,
	   "escapes, numbers and null come out as JSON");
	if (f)
		fclose(f);
	free(line);
	unlink(path);
	return done_testing();
}
