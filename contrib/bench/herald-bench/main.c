/*
 * herald-bench: the instrument herald's performance is measured with.
 * One binary, three commands: fleet (devices), sink (backend), rtt (round trips).
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "bench.h"

static void
main_usage(FILE *out)
{
	fprintf(out,
"usage: herald-bench COMMAND [options]\n"
"\n"
"  fleet   simulate devices on the broker: numbered status, telemetry, events;\n"
"          answers requests\n"
"  sink    a checking backend: verifies signatures, counts loss, duplicates,\n"
"          reordering and latency of what herald delivers\n"
"  rtt     requests through herald's REST API at a fixed rate, or (--raw) the\n"
"          same round trip over bare MQTT; latency percentiles\n"
"\n"
"herald-bench COMMAND --help lists a command's options; man herald-bench(1)\n"
"describes the reports.  Exit status: 0 ok, 1 failed or timed out, 2 usage.\n");
}

int
main(int argc, char **argv)
{
	if (argc < 2) {
		main_usage(stderr);
		return BENCH_EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		main_usage(stdout);
		return BENCH_EXIT_OK;
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("herald-bench %s\n", PACKAGE_VERSION);
		return BENCH_EXIT_OK;
	}
	if (strcmp(argv[1], "fleet") == 0)
		return fleet_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "sink") == 0)
		return sink_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "rtt") == 0)
		return rtt_main(argc - 1, argv + 1);
	fprintf(stderr, "herald-bench: unknown command %s\n", argv[1]);
	main_usage(stderr);
	return BENCH_EXIT_USAGE;
}
