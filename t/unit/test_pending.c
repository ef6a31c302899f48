/*
 * sql/pending.c: the ids notifications named, as the loader fetches them.
 * A row changed many times is fetched once; ids come out sorted (the
 * delta merge depends on it) and as a bigint[] literal; past the limit the
 * set gives up on ids and asks for a full load instead.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sql/pending.h"
#include "t/unit/tap.h"

static void test_dedup_and_order(void)
{
	pending_t *p = pending_new(100);
	const int64_t *ids;
	char *text;

	ok(p != NULL, "a set");
	if (p == NULL)
		return;
	ok(pending_empty(p), "new: empty");
	pending_add(p, PENDING_RULES, 42);
	pending_add(p, PENDING_RULES, 7);
	pending_add(p, PENDING_RULES, 42);
	pending_add(p, PENDING_RULES, -3);
	pending_add(p, PENDING_ACCOUNTS, 42);
	is_int(pending_count(p, PENDING_RULES), 3, "a rule changed twice counts once");
	is_int(pending_count(p, PENDING_ACCOUNTS), 1, "tables are apart: account 42 is not rule 42");
	is_int(pending_total(p), 4, "total over both tables");
	ids = pending_sorted(p, PENDING_RULES);
	ok(ids[0] == -3 && ids[1] == 7 && ids[2] == 42, "sorted ascending");
	pending_add(p, PENDING_RULES, 7);
	is_int(pending_count(p, PENDING_RULES), 3, "still deduplicated after sorting");
	text = pending_array_text(p, PENDING_RULES);
	is_str(text, "{-3,7,42}", "a bigint[] literal");
	free(text);
	text = pending_array_text(p, PENDING_ACCOUNTS);
	is_str(text, "{42}", "one id");
	free(text);
	pending_clear(p);
	ok(pending_empty(p), "cleared: empty");
	text = pending_array_text(p, PENDING_RULES);
	is_str(text, "{}", "an empty table is an empty array");
	free(text);
	pending_free(p);
}

static void test_overflow(void)
{
	pending_t *p = pending_new(10000);
	int rc = 0;

	if (p == NULL)
		return;
	for (int64_t i = 1; i <= 10000 && rc == 0; i++)
		rc = pending_add(p, i % 2 ? PENDING_RULES : PENDING_ACCOUNTS, i);
	is_int(rc, 0, "10,000 ids fit");
	ok(!pending_overflowed(p), "... without overflow");
	is_int(pending_add(p, PENDING_RULES, 1), 0, "an id already there is no new one");
	is_int(pending_add(p, PENDING_RULES, 10001), 1, "the 10,001st overflows");
	ok(pending_overflowed(p) && !pending_empty(p), "overflowed: not empty, asks for a full load");
	is_int(pending_total(p), 0, "... and holds no ids any more");
	is_int(pending_add(p, PENDING_RULES, 5), 1, "adding after an overflow still says overflow");
	pending_clear(p);
	ok(pending_empty(p) && !pending_overflowed(p), "clear ends the overflow");
	pending_overflow(p);
	ok(pending_overflowed(p), "an overflow asked for (TRUNCATE, bulk)");
	pending_free(p);
}

int main(void)
{
	test_dedup_and_order();
	test_overflow();
	return done_testing();
}
