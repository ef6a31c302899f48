/*
 * Command line: `tollgate -c FILE` runs in the foreground (systemd style),
 * `-t` checks the configuration and exits, `-V` prints the version.
 *
 * Exit codes: 0 stopped by SIGTERM/SIGINT (or -t: config ok), 1 -t found a
 * problem, 2 could not start (bad config, socket, shared memory).
 */
#include <event2/event.h>
#include <getopt.h>
#include <osipparser2/osip_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "master/config.h"
#include "master/master.h"
#include "master/proc.h"

/* libevent's own complaints become log events like any other */
static void event_log(int severity, const char *msg)
{
	/* a child's loop takes signals over from the master's copy it inherited: expected, not a warning */
	int expected = strstr(msg, "Added a signal to event base") != NULL;

	tg_log(severity >= EVENT_LOG_WARN && !expected ? TG_LOG_WARN : TG_LOG_DEBUG, 0, "libevent",
	       "message=%s", msg);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: tollgate [-t] [-c FILE] | -V | -h\n"
	           "  -c FILE  configuration (default /etc/tollgate/tollgate.yaml)\n"
	           "  -t       check the configuration and exit (0 ok, 1 problem)\n"
	           "  -V       print the version and exit\n");
}

int main(int argc, char **argv)
{
	const char *path = "/etc/tollgate/tollgate.yaml";
	static tg_config_t cfg;
	char err[512];
	int test = 0, opt;

	while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
		switch (opt) {
		case 'c':
			path = optarg;
			break;
		case 't':
			test = 1;
			break;
		case 'V':
			printf("tollgate %s\n", TG_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	if (tg_config_load(path, &cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "tollgate: %s\n", err);
		return test ? 1 : 2;
	}
	if (test) {
		printf("tollgate: %s: ok\n", cfg.path);
		return 0;
	}
	if (tg_log_open(cfg.log_file) < 0) {
		fprintf(stderr, "tollgate: cannot open log file %s: %m\n", cfg.log_file);
		return 2;
	}
	tg_log_set_level(cfg.log_level);
	event_set_log_callback(event_log);
	parser_init();
	proc_title_init(argc, argv);
	return master_main(&cfg);
}
