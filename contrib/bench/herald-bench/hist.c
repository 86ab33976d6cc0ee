/*
 * Latency histogram for herald-bench: log-linear buckets (exact below 128,
 * then 64 buckets per power of two), so quantiles are within 0.8 % at any scale.
 */
#include <string.h>

#include "bench.h"

void
hist_init(struct hist *h)
{
	memset(h, 0, sizeof(*h));
	h->min = UINT64_MAX;
}

unsigned
hist_index(uint64_t v)
{
	unsigned e;

	if (v < 128)
		return (unsigned)v;
	e = 63u - (unsigned)__builtin_clzll(v);         /* 7..63 */
	/* the top 7 bits (64..127) pick the linear sub-bucket inside [2^e, 2^(e+1)) */
	return 128u + (e - 7u) * 64u + (unsigned)((v >> (e - 6u)) - 64u);
}

static void
hist_bounds(unsigned idx, uint64_t *low, uint64_t *width)
{
	unsigned k, e;

	if (idx < 128) {
		*low = idx;
		*width = 1;
		return;
	}
	k = idx - 128u;
	e = k / 64u + 7u;
	*low = (uint64_t)(k % 64u + 64u) << (e - 6u);
	*width = 1ULL << (e - 6u);
}

void
hist_add(struct hist *h, uint64_t v)
{
	h->bucket[hist_index(v)]++;
	h->count++;
	h->sum += v;
	if (v < h->min)
		h->min = v;
	if (v > h->max)
		h->max = v;
}

uint64_t
hist_quantile(const struct hist *h, double q)
{
	uint64_t rank, seen = 0, low, width, v;

	if (h->count == 0)
		return 0;
	if (q <= 0)
		return h->min;
	if (q >= 1)
		return h->max;
	/* the smallest value with at least q of the samples at or below it */
	rank = (uint64_t)(q * (double)h->count);
	if ((double)rank < q * (double)h->count)
		rank++;
	if (rank == 0)
		rank = 1;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += h->bucket[i];
		if (seen < rank)
			continue;
		hist_bounds(i, &low, &width);
		v = low + width / 2;
		if (v < h->min)
			v = h->min;
		if (v > h->max)
			v = h->max;
		return v;
	}
	return h->max;
}

json_t *
hist_json(const struct hist *h)
{
	return json_pack("{sI sI sf sI sI sI sI sI}",
	    "count", (json_int_t)h->count,
	    "min", (json_int_t)(h->count ? h->min : 0),
	    "mean", h->count ? (double)h->sum / (double)h->count : 0.0,
	    "p50", (json_int_t)hist_quantile(h, 0.50),
	    "p90", (json_int_t)hist_quantile(h, 0.90),
	    "p99", (json_int_t)hist_quantile(h, 0.99),
	    "p99_9", (json_int_t)hist_quantile(h, 0.999),
	    "max", (json_int_t)h->max);
}

void
hist_print_ms(FILE *f, const char *label, const struct hist *h)
{
	if (h->count == 0) {
		fprintf(f, "%-12s no samples\n", label);
		return;
	}
	fprintf(f, "%-12s n %llu  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f ms\n",
	    label, (unsigned long long)h->count,
	    hist_quantile(h, 0.50) / 1e3, hist_quantile(h, 0.90) / 1e3,
	    hist_quantile(h, 0.99) / 1e3, hist_quantile(h, 0.999) / 1e3,
	    (double)h->max / 1e3);
}
