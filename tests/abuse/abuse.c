/*
 * The C ABI under abuse: every function of include/kvr.h is called with NULL pointers, zero
 * lengths, oversized keys and values, bad options, a closed handle, a double close, and a
 * close racing calls in other threads. Each check prints one line with the code it got and
 * compares it with the exact code expected; the program exits 1 on any mismatch and is meant
 * to run under valgrind (tests/abuse/run.sh) as well as plain (tests/abuse.rs).
 *
 *   cc -std=c11 -Wall -Wextra -Werror -pedantic -pthread -Iinclude tests/abuse/abuse.c \
 *      -Ltarget/debug -lkvr -Wl,-rpath,$PWD/target/debug -o abuse && ./abuse
 *
 * Every replica is a single node in its own directory under $TMPDIR, removed at the end.
 */

#define _XOPEN_SOURCE 700 /* mkdtemp, nftw, fork, nanosleep */

#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvr.h"

static int checks;
static int failures;
/* Short enough that every path built under it fits in PATH_MAX. */
static char base_dir[512];

/* ---- reporting ------------------------------------------------------------------------- */

static void expect_code_at(int line, const char *what, int got, int want, const kvr *db) {
    checks++;
    if (got == want) {
        printf("ok   %-64s %d %s", what, got, kvr_result_str(got));
    } else {
        failures++;
        printf("FAIL %-64s got %d %s, want %d %s (line %d)", what, got, kvr_result_str(got), want,
               kvr_result_str(want), line);
    }
    /* The handle's message shows what kvr said, which is the point of a named code. */
    if (db != NULL && got != KVR_OK) {
        printf(" -- %s", kvr_errmsg(db));
    }
    printf("\n");
}

static void expect_true_at(int line, const char *what, int cond) {
    checks++;
    if (cond) {
        printf("ok   %s\n", what);
    } else {
        failures++;
        printf("FAIL %s (line %d)\n", what, line);
    }
}

/* For the few calls whose documented outcome depends on timing, either code is right. */
static void expect_either_at(int line, const char *what, int got, int want1, int want2,
                             const kvr *db) {
    expect_code_at(line, what, got, got == want2 ? want2 : want1, db);
}

#define EXPECT(what, call, want) expect_code_at(__LINE__, (what), (call), (want), NULL)
#define EXPECT_DB(db, what, call, want) expect_code_at(__LINE__, (what), (call), (want), (db))
#define EXPECT_TRUE(what, cond) expect_true_at(__LINE__, (what), (cond))
#define EXPECT_EITHER(db, what, call, want1, want2)                                            \
    expect_either_at(__LINE__, (what), (call), (want1), (want2), (db))

/* ---- helpers --------------------------------------------------------------------------- */

static const uint8_t *u8(const char *s) { return (const uint8_t *)s; }

static void path_in_base(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", base_dir, name);
}

/* request_timeout_ms of replicas whose calls must succeed, even under valgrind on a busy
 * machine (a 4 MiB put then takes seconds). */
#define PATIENT_MS "120000"
/* request_timeout_ms of replicas whose calls are expected to time out. */
#define IMPATIENT_MS "3000"

/* Opens a single-node replica in base_dir/name; aborts the program if that fails, since
 * nothing after it would mean anything. */
static kvr *open_replica(const char *name, const char *timeout_ms) {
    char dir[PATH_MAX];
    path_in_base(dir, sizeof dir, name);
    kvr_options *o = kvr_options_new();
    if (o == NULL) {
        fprintf(stderr, "kvr_options_new returned NULL\n");
        exit(2);
    }
    /* A small map keeps valgrind's address space small; short ticks elect at once. */
    const char *opts[][2] = {{"dir", dir},
                             {"map_size_mb", "64"},
                             {"tick_ms", "10"},
                             {"request_timeout_ms", timeout_ms}};
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        if (kvr_options_set(o, opts[i][0], opts[i][1]) != KVR_OK) {
            fprintf(stderr, "option %s: %s\n", opts[i][0], kvr_options_errmsg(o));
            exit(2);
        }
    }
    kvr *db = NULL;
    int rc = kvr_open(o, &db);
    if (rc != KVR_OK || db == NULL) {
        fprintf(stderr, "kvr_open(%s): %d %s\n", dir, rc, kvr_options_errmsg(o));
        exit(2);
    }
    kvr_options_free(o);
    return db;
}

/* True if the (not NUL-terminated) buffer contains `text`. */
static int buf_contains(kvr_buf b, const char *text) {
    size_t n = strlen(text);
    for (size_t i = 0; b.ptr != NULL && i + n <= b.len; i++) {
        if (memcmp(b.ptr + i, text, n) == 0) {
            return 1;
        }
    }
    return 0;
}

static kvr_buf empty_buf(void) {
    kvr_buf b = {NULL, 0};
    return b;
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* ---- static functions ------------------------------------------------------------------ */

static void check_version_and_result_strings(void) {
    EXPECT_TRUE("kvr_version() == KVR_VERSION_NUMBER", kvr_version() == KVR_VERSION_NUMBER);
    const int codes[] = {KVR_OK,      KVR_NOT_FOUND, KVR_INVALID_ARG, KVR_TIMEOUT, KVR_NO_LEADER,
                         KVR_CLOSED,  KVR_IO,        KVR_CORRUPT,     KVR_PANIC,   KVR_BUSY,
                         KVR_CAS_FAILED, KVR_COMPACTED, KVR_REMOVED,  KVR_REFUSED};
    const size_t n = sizeof codes / sizeof codes[0];
    int distinct = 1;
    for (size_t i = 0; i < n; i++) {
        const char *a = kvr_result_str(codes[i]);
        if (a == NULL || a[0] == '\0' || strcmp(a, "unknown result code") == 0) {
            distinct = 0;
            continue;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(a, kvr_result_str(codes[j])) == 0) {
                distinct = 0;
            }
        }
    }
    EXPECT_TRUE("kvr_result_str: every named code has its own text", distinct);
    const int unknown[] = {1, -14, 12345, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *t = kvr_result_str(unknown[i]);
        char what[96];
        snprintf(what, sizeof what, "kvr_result_str(%d) is \"unknown result code\"", unknown[i]);
        EXPECT_TRUE(what, t != NULL && strcmp(t, "unknown result code") == 0);
    }
}

/* ---- options --------------------------------------------------------------------------- */

static void check_options(void) {
    kvr_options *o = kvr_options_new();
    EXPECT_TRUE("kvr_options_new() is not NULL", o != NULL);
    EXPECT_TRUE("kvr_options_errmsg of fresh options is \"\"", strcmp(kvr_options_errmsg(o), "") == 0);

    EXPECT("options_set(NULL options)", kvr_options_set(NULL, "dir", "x"), KVR_INVALID_ARG);
    EXPECT("options_set(NULL key)", kvr_options_set(o, NULL, "x"), KVR_INVALID_ARG);
    EXPECT("options_set(NULL value)", kvr_options_set(o, "dir", NULL), KVR_INVALID_ARG);
    EXPECT("options_set(NULL key, NULL value)", kvr_options_set(o, NULL, NULL), KVR_INVALID_ARG);
    EXPECT("options_set(empty key)", kvr_options_set(o, "", "1"), KVR_INVALID_ARG);
    EXPECT("options_set(unknown key)", kvr_options_set(o, "no_such_option", "1"), KVR_INVALID_ARG);
    EXPECT_TRUE("options_errmsg names the unknown key",
                strstr(kvr_options_errmsg(o), "no_such_option") != NULL);
    EXPECT("options_set(key in another case)", kvr_options_set(o, "NODE_ID", "1"), KVR_INVALID_ARG);
    EXPECT("options_set(dir, empty)", kvr_options_set(o, "dir", ""), KVR_INVALID_ARG);
    EXPECT("options_set(restore_from, empty)", kvr_options_set(o, "restore_from", ""),
           KVR_INVALID_ARG);
    EXPECT("options_set(cluster_secret, too short)", kvr_options_set(o, "cluster_secret", "short"),
           KVR_INVALID_ARG);

    /* Every numeric key under empty, negative, non-numeric and overflowing values. */
    const char *numeric[] = {"node_id",     "cluster_id", "request_timeout_ms", "tick_ms",
                             "election_ticks", "heartbeat_ticks", "map_size_mb",
                             "snapshot_entries", "compaction_margin", "watch_retain_entries",
                             "watch_retain_bytes"};
    const char *bad_numbers[] = {"", " ", "-1", "abc", "1.5", "0x10", "18446744073709551616",
                                 "99999999999999999999999999"};
    for (size_t i = 0; i < sizeof numeric / sizeof numeric[0]; i++) {
        for (size_t j = 0; j < sizeof bad_numbers / sizeof bad_numbers[0]; j++) {
            char what[128];
            snprintf(what, sizeof what, "options_set(%s, \"%s\")", numeric[i], bad_numbers[j]);
            EXPECT(what, kvr_options_set(o, numeric[i], bad_numbers[j]), KVR_INVALID_ARG);
        }
    }
    /* Out of range. */
    EXPECT("options_set(node_id, 0)", kvr_options_set(o, "node_id", "0"), KVR_INVALID_ARG);
    EXPECT("options_set(request_timeout_ms, 0)", kvr_options_set(o, "request_timeout_ms", "0"),
           KVR_INVALID_ARG);
    EXPECT("options_set(tick_ms, 0)", kvr_options_set(o, "tick_ms", "0"), KVR_INVALID_ARG);
    EXPECT("options_set(election_ticks, 1)", kvr_options_set(o, "election_ticks", "1"),
           KVR_INVALID_ARG);
    EXPECT("options_set(map_size_mb, 0)", kvr_options_set(o, "map_size_mb", "0"), KVR_INVALID_ARG);
    EXPECT("options_set(map_size_mb, 2^40)", kvr_options_set(o, "map_size_mb", "1099511627776"),
           KVR_INVALID_ARG);
    EXPECT("options_set(join, maybe)", kvr_options_set(o, "join", "maybe"), KVR_INVALID_ARG);
    EXPECT("options_set(join, empty)", kvr_options_set(o, "join", ""), KVR_INVALID_ARG);

    const char *bad_addrs[] = {"", "nowhere", ":7001", "127.0.0.1:", "127.0.0.1:99999",
                               "127.0.0.1:-1", "127.0.0.1:x"};
    for (size_t i = 0; i < sizeof bad_addrs / sizeof bad_addrs[0]; i++) {
        char what[128];
        snprintf(what, sizeof what, "options_set(listen, \"%s\")", bad_addrs[i]);
        EXPECT(what, kvr_options_set(o, "listen", bad_addrs[i]), KVR_INVALID_ARG);
    }
    const char *bad_peers[] = {"1", "1=", "=127.0.0.1:1", "0=127.0.0.1:1", "x=127.0.0.1:1",
                               "1=127.0.0.1", "1=127.0.0.1:1,", "1=127.0.0.1:1,,2=127.0.0.1:2",
                               "1=127.0.0.1:1,1=127.0.0.1:2", "1=127.0.0.1:70000"};
    for (size_t i = 0; i < sizeof bad_peers / sizeof bad_peers[0]; i++) {
        char what[128];
        snprintf(what, sizeof what, "options_set(peers, \"%s\")", bad_peers[i]);
        EXPECT(what, kvr_options_set(o, "peers", bad_peers[i]), KVR_INVALID_ARG);
    }
    /* More members than PEERS_MAX (64). */
    {
        char peers[65 * 24] = "";
        size_t len = 0;
        for (int id = 1; id <= 65; id++) {
            len += (size_t)snprintf(peers + len, sizeof peers - len, "%s%d=127.0.0.1:%d",
                                    id > 1 ? "," : "", id, 7000 + id);
        }
        EXPECT("options_set(peers, 65 members)", kvr_options_set(o, "peers", peers),
               KVR_INVALID_ARG);
    }

    /* Not UTF-8, in the key and in the value. */
    const char bad_utf8[] = {(char)0xff, (char)0xfe, 0};
    EXPECT("options_set(key not UTF-8)", kvr_options_set(o, bad_utf8, "1"), KVR_INVALID_ARG);
    EXPECT("options_set(dir not UTF-8)", kvr_options_set(o, "dir", bad_utf8), KVR_INVALID_ARG);

    /* Oversized strings: a 1 MiB key is unknown; a 1 MiB number is not a number. */
    {
        size_t big = 1 << 20;
        char *s = malloc(big + 1);
        if (s == NULL) {
            exit(2);
        }
        memset(s, 'k', big);
        s[big] = '\0';
        EXPECT("options_set(1 MiB key)", kvr_options_set(o, s, "1"), KVR_INVALID_ARG);
        memset(s, '9', big);
        EXPECT("options_set(node_id, 1 MiB of digits)", kvr_options_set(o, "node_id", s),
               KVR_INVALID_ARG);
        free(s);
    }

    EXPECT("options_set(node_id, 7) still works after all that", kvr_options_set(o, "node_id", "7"),
           KVR_OK);
    EXPECT_TRUE("kvr_options_errmsg(NULL) is a message, not NULL", kvr_options_errmsg(NULL) != NULL);
    kvr_options_free(NULL);
    EXPECT_TRUE("kvr_options_free(NULL) is a no-op", 1);
    kvr_options_free(o);
}

/* ---- open ------------------------------------------------------------------------------ */

static void check_open(void) {
    kvr *db = (kvr *)&checks; /* a sentinel: kvr_open must not write it on failure */
    kvr *const sentinel = db;
    EXPECT("open(NULL options)", kvr_open(NULL, &db), KVR_INVALID_ARG);
    kvr_options *o = kvr_options_new();
    EXPECT("open(NULL out)", kvr_open(o, NULL), KVR_INVALID_ARG);
    EXPECT("open(no dir)", kvr_open(o, &db), KVR_INVALID_ARG);
    EXPECT_TRUE("open failure leaves *out untouched", db == sentinel);
    EXPECT_TRUE("options_errmsg says dir is required", strstr(kvr_options_errmsg(o), "dir") != NULL);

    char dir[PATH_MAX];
    path_in_base(dir, sizeof dir, "open");
    kvr_options_set(o, "dir", dir);
    kvr_options_set(o, "map_size_mb", "64");
    kvr_options_set(o, "node_id", "4");
    kvr_options_set(o, "peers", "1=127.0.0.1:1,2=127.0.0.1:2");
    EXPECT("open(node_id not in peers)", kvr_open(o, &db), KVR_INVALID_ARG);
    kvr_options_set(o, "peers", "");
    kvr_options_set(o, "election_ticks", "3");
    kvr_options_set(o, "heartbeat_ticks", "3");
    EXPECT("open(election_ticks <= heartbeat_ticks)", kvr_open(o, &db), KVR_INVALID_ARG);
    kvr_options_set(o, "election_ticks", "10");
    kvr_options_set(o, "heartbeat_ticks", "2");
    kvr_options_set(o, "join", "true");
    EXPECT("open(join without listen)", kvr_open(o, &db), KVR_INVALID_ARG);
    kvr_options_set(o, "join", "false");
    EXPECT_TRUE("no failed open wrote *out", db == sentinel);

    /* A directory path through a regular file cannot be created. */
    char file[PATH_MAX];
    path_in_base(file, sizeof file, "a-file");
    FILE *f = fopen(file, "w");
    if (f != NULL) {
        fclose(f);
    }
    char under_file[PATH_MAX + 8];
    snprintf(under_file, sizeof under_file, "%s/db", file);
    kvr_options_set(o, "dir", under_file);
    EXPECT("open(dir under a regular file)", kvr_open(o, &db), KVR_IO);
    /* A name longer than the file system allows. */
    {
        char *longdir = malloc(PATH_MAX * 2);
        if (longdir == NULL) {
            exit(2);
        }
        int n = snprintf(longdir, PATH_MAX * 2, "%s/", base_dir);
        memset(longdir + n, 'd', (size_t)(PATH_MAX * 2 - n - 1));
        longdir[PATH_MAX * 2 - 1] = '\0';
        EXPECT("options_set(dir, longer than PATH_MAX)", kvr_options_set(o, "dir", longdir), KVR_OK);
        EXPECT("open(dir longer than PATH_MAX)", kvr_open(o, &db), KVR_IO);
        free(longdir);
    }
    /* A backup to restore from that is missing, or is no backup at all; each on a fresh
     * directory, as restore_from requires. */
    char bogus[PATH_MAX], fresh[PATH_MAX];
    path_in_base(bogus, sizeof bogus, "no-such-backup");
    kvr_options_set(o, "node_id", "1");
    path_in_base(fresh, sizeof fresh, "restore-missing");
    kvr_options_set(o, "dir", fresh);
    kvr_options_set(o, "restore_from", bogus);
    EXPECT("open(restore_from a missing file)", kvr_open(o, &db), KVR_IO);
    f = fopen(file, "w");
    if (f != NULL) {
        fputs("not a backup, but long enough to have a header and then some", f);
        fclose(f);
    }
    path_in_base(fresh, sizeof fresh, "restore-text");
    kvr_options_set(o, "dir", fresh);
    kvr_options_set(o, "restore_from", file);
    EXPECT("open(restore_from a text file)", kvr_open(o, &db), KVR_CORRUPT);
    EXPECT_TRUE("no failed open wrote *out", db == sentinel);
    path_in_base(bogus, sizeof bogus, "empty-backup");
    f = fopen(bogus, "w");
    if (f != NULL) {
        fclose(f);
    }
    path_in_base(fresh, sizeof fresh, "restore-empty");
    kvr_options_set(o, "dir", fresh);
    kvr_options_set(o, "restore_from", bogus);
    kvr *restored = NULL;
    int rc = kvr_open(o, &restored);
    EXPECT("open(restore_from an empty file)", rc, KVR_CORRUPT);
    if (rc == KVR_OK) {
        kvr_close(restored);
    }
    kvr_options_free(o);
    o = kvr_options_new();
    kvr_options_set(o, "map_size_mb", "64");

    /* The same directory twice. */
    kvr_options_set(o, "dir", dir);
    kvr_options_set(o, "node_id", "1");
    kvr *first = NULL;
    EXPECT("open(fresh dir)", kvr_open(o, &first), KVR_OK);
    EXPECT("open(dir already open)", kvr_open(o, &db), KVR_BUSY);
    EXPECT_TRUE("options_errmsg says the directory is in use",
                strstr(kvr_options_errmsg(o), "in use") != NULL);
    EXPECT("close", kvr_close(first), KVR_OK);
    kvr *again = NULL;
    EXPECT("open(same dir after close)", kvr_open(o, &again), KVR_OK);
    EXPECT("close", kvr_close(again), KVR_OK);
    kvr_options_free(o);
}

/* ---- lengths no buffer can have ------------------------------------------------------- */

/* Lengths beyond PTRDIFF_MAX describe no real buffer, so the caller is lying; kvr still has
 * to refuse them by their size alone. Run in a child process so that an abort is reported as
 * a failed check instead of ending the suite. */
static int impossible_lengths_child(void) {
    checks = 0;
    failures = 0;
    kvr *db = open_replica("lengths", PATIENT_MS);
    const size_t huge[] = {SIZE_MAX, (size_t)PTRDIFF_MAX + 1};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        kvr_buf b = empty_buf();
        char what[96];
        snprintf(what, sizeof what, "put(key_len %zu)", huge[i]);
        EXPECT_DB(db, what, kvr_put(db, u8("k"), huge[i], u8("v"), 1), KVR_INVALID_ARG);
        snprintf(what, sizeof what, "put(val_len %zu)", huge[i]);
        EXPECT_DB(db, what, kvr_put(db, u8("k"), 1, u8("v"), huge[i]), KVR_INVALID_ARG);
        snprintf(what, sizeof what, "get(key_len %zu)", huge[i]);
        EXPECT_DB(db, what, kvr_get(db, u8("k"), huge[i], &b), KVR_INVALID_ARG);
        snprintf(what, sizeof what, "get_ex(key_len %zu)", huge[i]);
        EXPECT_DB(db, what, kvr_get_ex(db, u8("k"), huge[i], KVR_READ_STALE, &b), KVR_INVALID_ARG);
        snprintf(what, sizeof what, "delete(key_len %zu)", huge[i]);
        EXPECT_DB(db, what, kvr_delete(db, u8("k"), huge[i]), KVR_INVALID_ARG);
        snprintf(what, sizeof what, "put_ttl(val_len %zu)", huge[i]);
        EXPECT_DB(db, what, kvr_put_ttl(db, u8("k"), 1, u8("v"), huge[i], 1000), KVR_INVALID_ARG);
        snprintf(what, sizeof what, "cas(expected_len %zu)", huge[i]);
        EXPECT_DB(db, what, kvr_cas(db, u8("k"), 1, u8("v"), huge[i], 0, u8("w"), 1),
                  KVR_INVALID_ARG);
        snprintf(what, sizeof what, "append(val_len %zu)", huge[i]);
        EXPECT_DB(db, what, kvr_append(db, u8("k"), 1, u8("v"), huge[i]), KVR_INVALID_ARG);
        kvr_batch_op op = {KVR_OP_PUT, u8("k"), 1, u8("v"), 1};
        snprintf(what, sizeof what, "batch(n %zu)", huge[i]);
        EXPECT_DB(db, what, kvr_batch(db, &op, huge[i]), KVR_INVALID_ARG);
        op.key_len = huge[i];
        snprintf(what, sizeof what, "batch(op key_len %zu)", huge[i]);
        EXPECT_DB(db, what, kvr_batch(db, &op, 1), KVR_INVALID_ARG);
    }
    EXPECT("close", kvr_close(db), KVR_OK);
    return failures == 0 ? 0 : 1;
}

static void check_impossible_lengths(void) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        int rc = impossible_lengths_child();
        fflush(stdout);
        _exit(rc);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) {
        printf("     the child was killed by signal %d\n", WTERMSIG(status));
    }
    EXPECT_TRUE("impossible lengths: the child survives every call and every check passed",
                WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* ---- data calls on an open handle ------------------------------------------------------ */

static void check_null_handle(void) {
    kvr_buf b = empty_buf();
    kvr_status_info st;
    EXPECT("put(NULL db)", kvr_put(NULL, u8("k"), 1, u8("v"), 1), KVR_INVALID_ARG);
    EXPECT("get(NULL db)", kvr_get(NULL, u8("k"), 1, &b), KVR_INVALID_ARG);
    EXPECT("get_ex(NULL db)", kvr_get_ex(NULL, u8("k"), 1, KVR_READ_STALE, &b), KVR_INVALID_ARG);
    EXPECT("delete(NULL db)", kvr_delete(NULL, u8("k"), 1), KVR_INVALID_ARG);
    EXPECT("status(NULL db)", kvr_status(NULL, &st), KVR_INVALID_ARG);
    EXPECT("add_node(NULL db)", kvr_add_node(NULL, 2, "127.0.0.1:1"), KVR_INVALID_ARG);
    EXPECT("add_learner(NULL db)", kvr_add_learner(NULL, 2, "127.0.0.1:1"), KVR_INVALID_ARG);
    EXPECT("remove_node(NULL db)", kvr_remove_node(NULL, 2), KVR_INVALID_ARG);
    EXPECT("transfer_leader(NULL db)", kvr_transfer_leader(NULL, 1), KVR_INVALID_ARG);
    EXPECT("members(NULL db)", kvr_members(NULL, &b), KVR_INVALID_ARG);
    EXPECT("stats(NULL db)", kvr_stats(NULL, &b), KVR_INVALID_ARG);
    EXPECT("backup(NULL db)", kvr_backup(NULL, "/nonexistent/backup"), KVR_INVALID_ARG);
    EXPECT("put_ttl(NULL db)", kvr_put_ttl(NULL, u8("k"), 1, u8("v"), 1, 1000), KVR_INVALID_ARG);
    kvr_batch_op op = {KVR_OP_PUT, u8("k"), 1, u8("v"), 1};
    EXPECT("batch(NULL db)", kvr_batch(NULL, &op, 1), KVR_INVALID_ARG);
    EXPECT("cas(NULL db)", kvr_cas(NULL, u8("k"), 1, NULL, 0, 1, u8("v"), 1), KVR_INVALID_ARG);
    EXPECT("append(NULL db)", kvr_append(NULL, u8("k"), 1, u8("v"), 1), KVR_INVALID_ARG);
    kvr_iter *it = NULL;
    EXPECT("scan(NULL db)", kvr_scan(NULL, NULL, 0, NULL, 0, 10, KVR_READ_STALE, &it),
           KVR_INVALID_ARG);
    EXPECT("scan_prefix(NULL db)", kvr_scan_prefix(NULL, NULL, 0, 10, KVR_READ_STALE, &it),
           KVR_INVALID_ARG);
    kvr_watcher *w = NULL;
    EXPECT("watch(NULL db)", kvr_watch(NULL, NULL, 0, 0, &w), KVR_INVALID_ARG);
    EXPECT_TRUE("no NULL-handle call wrote an iterator or watcher", it == NULL && w == NULL);
    kvr_buf k = empty_buf();
    EXPECT("iter_next(NULL iterator)", kvr_iter_next(NULL, &k, &b), KVR_INVALID_ARG);
    EXPECT("iter_continuation(NULL iterator)", kvr_iter_continuation(NULL, &k), KVR_INVALID_ARG);
    kvr_iter_free(NULL);
    EXPECT_TRUE("kvr_iter_free(NULL) is a no-op", 1);
    kvr_event ev;
    memset(&ev, 0, sizeof ev);
    EXPECT("watch_next(NULL watcher)", kvr_watch_next(NULL, 0, &ev), KVR_INVALID_ARG);
    kvr_event_free(NULL);
    EXPECT_TRUE("kvr_event_free(NULL) is a no-op", 1);
    kvr_event_free(&ev);
    EXPECT_TRUE("kvr_event_free of a zeroed event is a no-op",
                ev.key.ptr == NULL && ev.value.ptr == NULL);
    kvr_watch_free(NULL);
    EXPECT_TRUE("kvr_watch_free(NULL) is a no-op", 1);
    EXPECT("close(NULL db) is a no-op", kvr_close(NULL), KVR_OK);
    EXPECT_TRUE("kvr_errmsg(NULL) is a message, not NULL", kvr_errmsg(NULL) != NULL);
    kvr_buf_free(NULL);
    EXPECT_TRUE("kvr_buf_free(NULL) is a no-op", 1);
    EXPECT_TRUE("no NULL-handle call wrote its out-param", b.ptr == NULL && b.len == 0);
}

static void check_keys_and_values(kvr *db) {
    kvr_buf b = empty_buf();
    static uint8_t key[KVR_KEY_BYTES_MAX + 1];
    memset(key, 'k', sizeof key);
    uint8_t *value = malloc(KVR_VALUE_BYTES_MAX + 1);
    if (value == NULL) {
        exit(2);
    }
    memset(value, 'v', KVR_VALUE_BYTES_MAX + 1);

    EXPECT_TRUE("kvr_errmsg of a fresh handle is \"\"", strcmp(kvr_errmsg(db), "") == 0);
    EXPECT_DB(db, "put(NULL key, len 1)", kvr_put(db, NULL, 1, u8("v"), 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "put(NULL key, len 0)", kvr_put(db, NULL, 0, u8("v"), 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "put(empty key)", kvr_put(db, u8("k"), 0, u8("v"), 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "put(key of 512 bytes)", kvr_put(db, key, KVR_KEY_BYTES_MAX + 1, u8("v"), 1),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "put(NULL value, len 5)", kvr_put(db, u8("k"), 1, NULL, 5), KVR_INVALID_ARG);
    EXPECT_DB(db, "put(value of 4 MiB + 1)",
              kvr_put(db, u8("k"), 1, value, KVR_VALUE_BYTES_MAX + 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "put(key 511 bytes, value 4 MiB): the limits themselves",
              kvr_put(db, key, KVR_KEY_BYTES_MAX, value, KVR_VALUE_BYTES_MAX), KVR_OK);
    EXPECT_DB(db, "get(key 511 bytes)", kvr_get(db, key, KVR_KEY_BYTES_MAX, &b), KVR_OK);
    EXPECT_TRUE("get returns the 4 MiB value intact",
                b.len == KVR_VALUE_BYTES_MAX && memcmp(b.ptr, value, b.len) == 0);
    kvr_buf_free(&b);
    EXPECT_TRUE("kvr_buf_free resets the buffer", b.ptr == NULL && b.len == 0);
    kvr_buf_free(&b);
    EXPECT_TRUE("kvr_buf_free of a reset buffer is a no-op", b.ptr == NULL && b.len == 0);
    EXPECT_DB(db, "put(NULL value, len 0): an empty value", kvr_put(db, u8("e"), 1, NULL, 0),
              KVR_OK);
    EXPECT_DB(db, "get(empty value)", kvr_get(db, u8("e"), 1, &b), KVR_OK);
    EXPECT_TRUE("an empty value comes back as a non-NULL pointer and length 0",
                b.ptr != NULL && b.len == 0);
    kvr_buf_free(&b);
    EXPECT_DB(db, "put(key with NUL bytes)", kvr_put(db, u8("a\0b"), 3, u8("\0"), 1), KVR_OK);
    EXPECT_DB(db, "get(key with NUL bytes)", kvr_get(db, u8("a\0b"), 3, &b), KVR_OK);
    EXPECT_TRUE("binary key and value round-trip", b.len == 1 && b.ptr[0] == 0);
    kvr_buf_free(&b);

    EXPECT_DB(db, "get(NULL key)", kvr_get(db, NULL, 1, &b), KVR_INVALID_ARG);
    EXPECT_DB(db, "get(empty key)", kvr_get(db, u8("k"), 0, &b), KVR_INVALID_ARG);
    EXPECT_DB(db, "get(key of 512 bytes)", kvr_get(db, key, KVR_KEY_BYTES_MAX + 1, &b),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "get(NULL out)", kvr_get(db, u8("e"), 1, NULL), KVR_INVALID_ARG);
    EXPECT_DB(db, "get_ex(NULL out)", kvr_get_ex(db, u8("e"), 1, KVR_READ_STALE, NULL),
              KVR_INVALID_ARG);
    const int bad_consistency[] = {-1, 77, INT_MAX, INT_MIN};
    for (size_t i = 0; i < sizeof bad_consistency / sizeof bad_consistency[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "get_ex(consistency %d)", bad_consistency[i]);
        EXPECT_DB(db, what, kvr_get_ex(db, u8("e"), 1, bad_consistency[i], &b), KVR_INVALID_ARG);
    }
    EXPECT_DB(db, "get_ex(key 512 bytes, stale)",
              kvr_get_ex(db, key, KVR_KEY_BYTES_MAX + 1, KVR_READ_STALE, &b), KVR_INVALID_ARG);
    kvr_buf untouched = {(uint8_t *)&checks, 99};
    EXPECT_DB(db, "get(absent key)", kvr_get(db, u8("absent"), 6, &untouched), KVR_NOT_FOUND);
    EXPECT_DB(db, "get_ex(absent key, stale)",
              kvr_get_ex(db, u8("absent"), 6, KVR_READ_STALE, &untouched), KVR_NOT_FOUND);
    EXPECT_TRUE("NOT_FOUND leaves the out-param untouched",
                untouched.ptr == (uint8_t *)&checks && untouched.len == 99);
    EXPECT_TRUE("no failed get wrote its out-param", b.ptr == NULL && b.len == 0);

    EXPECT_DB(db, "delete(NULL key)", kvr_delete(db, NULL, 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "delete(NULL key, len 0)", kvr_delete(db, NULL, 0), KVR_INVALID_ARG);
    EXPECT_DB(db, "delete(empty key)", kvr_delete(db, u8("k"), 0), KVR_INVALID_ARG);
    EXPECT_DB(db, "delete(key of 512 bytes)", kvr_delete(db, key, KVR_KEY_BYTES_MAX + 1),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "delete(absent key) is not an error", kvr_delete(db, u8("absent"), 6), KVR_OK);
    EXPECT_DB(db, "delete(key 511 bytes)", kvr_delete(db, key, KVR_KEY_BYTES_MAX), KVR_OK);
    EXPECT_DB(db, "get(deleted key)", kvr_get(db, key, KVR_KEY_BYTES_MAX, &b), KVR_NOT_FOUND);

    kvr_status_info st;
    memset(&st, 0, sizeof st);
    EXPECT_DB(db, "status(NULL out)", kvr_status(db, NULL), KVR_INVALID_ARG);
    EXPECT_DB(db, "status", kvr_status(db, &st), KVR_OK);
    EXPECT_TRUE("status: node 1 leads itself",
                st.node_id == 1 && st.leader_id == 1 && st.role == KVR_ROLE_LEADER);
    EXPECT_TRUE("status: applied <= committed <= last index",
                st.applied_index <= st.commit_index && st.commit_index <= st.last_index);
    EXPECT_DB(db, "get_ex(absent key, linearizable)",
              kvr_get_ex(db, u8("absent"), 6, KVR_READ_LINEARIZABLE, &b), KVR_NOT_FOUND);
    EXPECT_TRUE("kvr_errmsg after a failure is not empty", kvr_errmsg(db)[0] != '\0');
    free(value);
}

/* ---- TTL, batches, compare-and-swap, append ------------------------------------------ */

static void check_data_model(kvr *db) {
    static uint8_t key[KVR_KEY_BYTES_MAX + 1];
    memset(key, 'k', sizeof key);
    uint8_t *value = malloc(KVR_VALUE_BYTES_MAX + 1);
    if (value == NULL) {
        exit(2);
    }
    memset(value, 'v', KVR_VALUE_BYTES_MAX + 1);
    kvr_buf b = empty_buf();

    EXPECT_DB(db, "put_ttl(ttl 0)", kvr_put_ttl(db, u8("t"), 1, u8("v"), 1, 0), KVR_INVALID_ARG);
    EXPECT_DB(db, "put_ttl(NULL key)", kvr_put_ttl(db, NULL, 1, u8("v"), 1, 1000),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "put_ttl(empty key)", kvr_put_ttl(db, u8("t"), 0, u8("v"), 1, 1000),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "put_ttl(key of 512 bytes)",
              kvr_put_ttl(db, key, KVR_KEY_BYTES_MAX + 1, u8("v"), 1, 1000), KVR_INVALID_ARG);
    EXPECT_DB(db, "put_ttl(key of 504 bytes)",
              kvr_put_ttl(db, key, KVR_TTL_KEY_BYTES_MAX + 1, u8("v"), 1, 1000), KVR_INVALID_ARG);
    EXPECT_DB(db, "put_ttl(key of 503 bytes)",
              kvr_put_ttl(db, key, KVR_TTL_KEY_BYTES_MAX, u8("v"), 1, 1000), KVR_OK);
    EXPECT_DB(db, "put_ttl(NULL value, len 1)", kvr_put_ttl(db, u8("t"), 1, NULL, 1, 1000),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "put_ttl(value of 4 MiB + 1)",
              kvr_put_ttl(db, u8("t"), 1, value, KVR_VALUE_BYTES_MAX + 1, 1000), KVR_INVALID_ARG);
    EXPECT_DB(db, "put_ttl(ttl UINT64_MAX): saturates, never overflows",
              kvr_put_ttl(db, u8("t"), 1, u8("v"), 1, UINT64_MAX), KVR_OK);
    EXPECT_DB(db, "get(key with the longest ttl)", kvr_get(db, u8("t"), 1, &b), KVR_OK);
    kvr_buf_free(&b);

    kvr_batch_op ops[5];
    for (int i = 0; i < 5; i++) {
        kvr_batch_op op = {KVR_OP_PUT, key, (size_t)(i + 1), value, KVR_VALUE_BYTES_MAX};
        ops[i] = op;
    }
    EXPECT_DB(db, "batch(NULL ops, n 1)", kvr_batch(db, NULL, 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "batch(NULL ops, n 0): an empty batch", kvr_batch(db, NULL, 0), KVR_OK);
    EXPECT_DB(db, "batch(5 values of 4 MiB: over 16 MiB)", kvr_batch(db, ops, 5),
              KVR_INVALID_ARG);
    kvr_batch_op bad[] = {{KVR_OP_PUT, u8("b1"), 2, u8("1"), 1},
                          {KVR_OP_PUT, u8("b2"), 2, u8("2"), 1}};
    bad[1].op = 77;
    EXPECT_DB(db, "batch(unknown op in second place)", kvr_batch(db, bad, 2), KVR_INVALID_ARG);
    bad[1].op = KVR_OP_DELETE;
    bad[1].key = NULL;
    EXPECT_DB(db, "batch(NULL key in second place)", kvr_batch(db, bad, 2), KVR_INVALID_ARG);
    bad[1].key = key;
    bad[1].key_len = KVR_KEY_BYTES_MAX + 1;
    EXPECT_DB(db, "batch(key of 512 bytes in second place)", kvr_batch(db, bad, 2),
              KVR_INVALID_ARG);
    bad[1].key_len = 0;
    EXPECT_DB(db, "batch(empty key in second place)", kvr_batch(db, bad, 2), KVR_INVALID_ARG);
    bad[1].op = KVR_OP_PUT;
    bad[1].key_len = 2;
    bad[1].val = NULL;
    bad[1].val_len = 3;
    EXPECT_DB(db, "batch(NULL value with a length)", kvr_batch(db, bad, 2), KVR_INVALID_ARG);
    EXPECT_DB(db, "get(first write of the refused batches): none applied",
              kvr_get(db, u8("b1"), 2, &b), KVR_NOT_FOUND);
    {
        enum { N = 10001 };
        kvr_batch_op *many = calloc(N, sizeof *many);
        if (many == NULL) {
            exit(2);
        }
        for (size_t i = 0; i < N; i++) {
            kvr_batch_op op = {KVR_OP_DELETE, u8("many"), 4, NULL, 0};
            many[i] = op;
        }
        EXPECT_DB(db, "batch(10001 writes)", kvr_batch(db, many, N), KVR_INVALID_ARG);
        EXPECT_DB(db, "batch(10000 writes): the limit itself", kvr_batch(db, many, N - 1), KVR_OK);
        free(many);
    }
    bad[1].val = u8("2");
    bad[1].val_len = 1;
    bad[1].key = u8("b2");
    EXPECT_DB(db, "batch(two valid writes)", kvr_batch(db, bad, 2), KVR_OK);

    EXPECT_DB(db, "cas(NULL key)", kvr_cas(db, NULL, 1, NULL, 0, 1, u8("v"), 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "cas(key of 512 bytes)",
              kvr_cas(db, key, KVR_KEY_BYTES_MAX + 1, NULL, 0, 1, u8("v"), 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "cas(NULL expected with a length)",
              kvr_cas(db, u8("c"), 1, NULL, 1, 0, u8("v"), 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "cas(NULL new value with a length)",
              kvr_cas(db, u8("c"), 1, NULL, 0, 1, NULL, 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "cas(expected of 4 MiB + 1)",
              kvr_cas(db, u8("c"), 1, value, KVR_VALUE_BYTES_MAX + 1, 0, u8("v"), 1),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "cas(new value of 4 MiB + 1)",
              kvr_cas(db, u8("c"), 1, NULL, 0, 1, value, KVR_VALUE_BYTES_MAX + 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "cas(expect absent, NULL expected with a length: ignored)",
              kvr_cas(db, u8("c"), 1, NULL, 99, 1, u8("1"), 1), KVR_OK);
    EXPECT_DB(db, "cas(expect absent, key present)",
              kvr_cas(db, u8("c"), 1, NULL, 0, 1, u8("2"), 1), KVR_CAS_FAILED);
    EXPECT_DB(db, "cas(expect a different value)",
              kvr_cas(db, u8("c"), 1, u8("9"), 1, 0, u8("2"), 1), KVR_CAS_FAILED);
    EXPECT_DB(db, "cas(expect the current value)",
              kvr_cas(db, u8("c"), 1, u8("1"), 1, 0, u8("2"), 1), KVR_OK);

    EXPECT_DB(db, "append(NULL key)", kvr_append(db, NULL, 1, u8("v"), 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "append(empty key)", kvr_append(db, u8("a"), 0, u8("v"), 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "append(NULL value with a length)", kvr_append(db, u8("a"), 1, NULL, 1),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "append(value of 4 MiB + 1)",
              kvr_append(db, u8("a"), 1, value, KVR_VALUE_BYTES_MAX + 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "append(4 MiB to an absent key)",
              kvr_append(db, u8("a"), 1, value, KVR_VALUE_BYTES_MAX), KVR_OK);
    EXPECT_DB(db, "append(1 byte past the value limit)", kvr_append(db, u8("a"), 1, u8("v"), 1),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "append(NULL value, len 0)", kvr_append(db, u8("a"), 1, NULL, 0), KVR_OK);
    EXPECT_DB(db, "get(appended key)", kvr_get(db, u8("a"), 1, &b), KVR_OK);
    EXPECT_TRUE("the refused append left the value as it was", b.len == KVR_VALUE_BYTES_MAX);
    kvr_buf_free(&b);
    EXPECT_DB(db, "delete(appended key)", kvr_delete(db, u8("a"), 1), KVR_OK);
    free(value);
}

/* ---- scans and iterators --------------------------------------------------------------- */

static void check_scans(kvr *db) {
    static uint8_t key[KVR_KEY_BYTES_MAX + 2];
    memset(key, 's', sizeof key);
    kvr_iter *const sentinel = (kvr_iter *)&checks;
    kvr_iter *it = sentinel;
    EXPECT_DB(db, "scan(NULL out)", kvr_scan(db, NULL, 0, NULL, 0, 10, KVR_READ_STALE, NULL),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "scan(NULL start with a length)",
              kvr_scan(db, NULL, 1, NULL, 0, 10, KVR_READ_STALE, &it), KVR_INVALID_ARG);
    EXPECT_DB(db, "scan(NULL end with a length)",
              kvr_scan(db, NULL, 0, NULL, 1, 10, KVR_READ_STALE, &it), KVR_INVALID_ARG);
    EXPECT_DB(db, "scan(limit 0)", kvr_scan(db, NULL, 0, NULL, 0, 0, KVR_READ_STALE, &it),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "scan(limit 10001)", kvr_scan(db, NULL, 0, NULL, 0, 10001, KVR_READ_STALE, &it),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "scan(limit SIZE_MAX)",
              kvr_scan(db, NULL, 0, NULL, 0, SIZE_MAX, KVR_READ_STALE, &it), KVR_INVALID_ARG);
    EXPECT_DB(db, "scan(end before start)",
              kvr_scan(db, u8("b"), 1, u8("a"), 1, 10, KVR_READ_STALE, &it), KVR_INVALID_ARG);
    EXPECT_DB(db, "scan(end equal to start)",
              kvr_scan(db, u8("b"), 1, u8("b"), 1, 10, KVR_READ_STALE, &it), KVR_INVALID_ARG);
    EXPECT_DB(db, "scan(consistency 77)", kvr_scan(db, NULL, 0, NULL, 0, 10, 77, &it),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "scan_prefix(NULL out)", kvr_scan_prefix(db, NULL, 0, 10, KVR_READ_STALE, NULL),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "scan_prefix(NULL prefix with a length)",
              kvr_scan_prefix(db, NULL, 1, 10, KVR_READ_STALE, &it), KVR_INVALID_ARG);
    EXPECT_DB(db, "scan_prefix(limit 0)", kvr_scan_prefix(db, NULL, 0, 0, KVR_READ_STALE, &it),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "scan_prefix(consistency -1)", kvr_scan_prefix(db, NULL, 0, 10, -1, &it),
              KVR_INVALID_ARG);
    EXPECT_TRUE("no failed scan wrote its out-param", it == sentinel);

    /* Bounds longer than any key are no keys, but they are valid bounds. */
    EXPECT_DB(db, "scan(start of 513 bytes)",
              kvr_scan(db, key, sizeof key, NULL, 0, 10, KVR_READ_STALE, &it), KVR_OK);
    kvr_iter_free(it);
    EXPECT_DB(db, "scan_prefix(prefix of 513 bytes)",
              kvr_scan_prefix(db, key, sizeof key, 10, KVR_READ_STALE, &it), KVR_OK);
    kvr_buf k = empty_buf(), v = empty_buf();
    EXPECT("iter_next(past a prefix no key has)", kvr_iter_next(it, &k, &v), KVR_NOT_FOUND);
    kvr_iter_free(it);

    for (int i = 0; i < 3; i++) {
        char name[8];
        snprintf(name, sizeof name, "p%d", i);
        EXPECT_DB(db, "put(scan fixture)", kvr_put(db, u8(name), 2, u8("x"), 1), KVR_OK);
    }
    const int consistency[] = {KVR_READ_LINEARIZABLE, KVR_READ_LEASE, KVR_READ_STALE};
    for (size_t c = 0; c < sizeof consistency / sizeof consistency[0]; c++) {
        char what[64];
        snprintf(what, sizeof what, "scan_prefix(\"p\", limit 2, consistency %d)", consistency[c]);
        EXPECT_DB(db, what, kvr_scan_prefix(db, u8("p"), 1, 2, consistency[c], &it), KVR_OK);
        kvr_iter_free(it);
    }
    EXPECT_DB(db, "scan_prefix(\"p\", limit 2)",
              kvr_scan_prefix(db, u8("p"), 1, 2, KVR_READ_STALE, &it), KVR_OK);
    EXPECT("iter_next(NULL key out)", kvr_iter_next(it, NULL, &v), KVR_INVALID_ARG);
    EXPECT("iter_next(NULL value out)", kvr_iter_next(it, &k, NULL), KVR_INVALID_ARG);
    EXPECT("iter_next 1", kvr_iter_next(it, &k, &v), KVR_OK);
    EXPECT_TRUE("first pair is p0=x", k.len == 2 && memcmp(k.ptr, "p0", 2) == 0 && v.len == 1);
    kvr_buf_free(&k);
    kvr_buf_free(&v);
    EXPECT("iter_next 2", kvr_iter_next(it, &k, &v), KVR_OK);
    kvr_buf_free(&k);
    kvr_buf_free(&v);
    EXPECT("iter_next past the limit", kvr_iter_next(it, &k, &v), KVR_NOT_FOUND);
    EXPECT_TRUE("NOT_FOUND leaves both buffers untouched", k.ptr == NULL && v.ptr == NULL);
    EXPECT("iter_continuation(NULL out)", kvr_iter_continuation(it, NULL), KVR_INVALID_ARG);
    kvr_buf next = empty_buf();
    EXPECT("iter_continuation (the limit cut the scan)", kvr_iter_continuation(it, &next), KVR_OK);
    EXPECT_TRUE("continuation is p2", next.len == 2 && memcmp(next.ptr, "p2", 2) == 0);
    kvr_iter_free(it);
    EXPECT_DB(db, "scan(from the continuation, end \"p3\")",
              kvr_scan(db, next.ptr, next.len, u8("p3"), 2, 10, KVR_READ_STALE, &it), KVR_OK);
    kvr_buf_free(&next);
    EXPECT("iter_next", kvr_iter_next(it, &k, &v), KVR_OK);
    kvr_buf_free(&k);
    kvr_buf_free(&v);
    EXPECT("iter_next at the end", kvr_iter_next(it, &k, &v), KVR_NOT_FOUND);
    EXPECT("iter_continuation (whole range covered)", kvr_iter_continuation(it, &next),
           KVR_NOT_FOUND);
    EXPECT_TRUE("NOT_FOUND leaves the continuation untouched", next.ptr == NULL);
    kvr_iter_free(it);
}

/* ---- the change feed ------------------------------------------------------------------- */

static void check_watch(kvr *db) {
    kvr_watcher *const sentinel = (kvr_watcher *)&checks;
    kvr_watcher *w = sentinel;
    EXPECT_DB(db, "watch(NULL out)", kvr_watch(db, NULL, 0, 0, NULL), KVR_INVALID_ARG);
    EXPECT_DB(db, "watch(NULL prefix with a length)", kvr_watch(db, NULL, 1, 0, &w),
              KVR_INVALID_ARG);
    EXPECT_TRUE("no failed watch wrote its out-param", w == sentinel);
    EXPECT_DB(db, "watch(\"w\", from the next change)", kvr_watch(db, u8("w"), 1, 0, &w), KVR_OK);
    kvr_event ev;
    memset(&ev, 0, sizeof ev);
    EXPECT("watch_next(NULL event)", kvr_watch_next(w, 0, NULL), KVR_INVALID_ARG);
    EXPECT("watch_next(timeout 0, nothing yet)", kvr_watch_next(w, 0, &ev), KVR_TIMEOUT);
    EXPECT_TRUE("TIMEOUT leaves the event untouched", ev.key.ptr == NULL && ev.index == 0);
    EXPECT_DB(db, "put(a watched key)", kvr_put(db, u8("w1"), 2, u8("x"), 1), KVR_OK);
    EXPECT("watch_next", kvr_watch_next(w, 60000, &ev), KVR_OK);
    EXPECT_TRUE("the event is the put of w1",
                ev.kind == KVR_EVENT_PUT && ev.key.len == 2 && memcmp(ev.key.ptr, "w1", 2) == 0 &&
                    ev.index > 0);
    kvr_event_free(&ev);
    EXPECT_TRUE("kvr_event_free resets both buffers", ev.key.ptr == NULL && ev.value.ptr == NULL);
    kvr_event_free(&ev);
    EXPECT_TRUE("kvr_event_free of a freed event is a no-op", 1);
    kvr_watch_free(w);

    EXPECT_DB(db, "watch(from index UINT64_MAX)", kvr_watch(db, NULL, 0, UINT64_MAX, &w), KVR_OK);
    EXPECT("watch_next(from the far future)", kvr_watch_next(w, 0, &ev), KVR_TIMEOUT);
    kvr_watch_free(w);
    static uint8_t long_prefix[1024];
    memset(long_prefix, 'w', sizeof long_prefix);
    EXPECT_DB(db, "watch(prefix of 1 KiB, from index 1)",
              kvr_watch(db, long_prefix, sizeof long_prefix, 1, &w), KVR_OK);
    EXPECT("watch_next(prefix no key has)", kvr_watch_next(w, 0, &ev), KVR_TIMEOUT);
    kvr_watch_free(w);
}

/* ---- stats and backup ------------------------------------------------------------------ */

static void check_admin(kvr *db) {
    kvr_buf b = empty_buf();
    EXPECT_DB(db, "stats(NULL out)", kvr_stats(db, NULL), KVR_INVALID_ARG);
    EXPECT_DB(db, "stats", kvr_stats(db, &b), KVR_OK);
    EXPECT_TRUE("stats is JSON naming node 1", buf_contains(b, "\"node_id\":1"));
    kvr_buf_free(&b);

    char path[PATH_MAX], missing_dir[PATH_MAX + 16];
    path_in_base(path, sizeof path, "backup.kvr");
    snprintf(missing_dir, sizeof missing_dir, "%s/no/such/dir", base_dir);
    EXPECT_DB(db, "backup(NULL path)", kvr_backup(db, NULL), KVR_INVALID_ARG);
    EXPECT_DB(db, "backup(path not UTF-8)", kvr_backup(db, "\xff\xfe"), KVR_INVALID_ARG);
    EXPECT_DB(db, "backup(empty path)", kvr_backup(db, ""), KVR_IO);
    EXPECT_DB(db, "backup(into a missing directory)", kvr_backup(db, missing_dir), KVR_IO);
    EXPECT_DB(db, "backup", kvr_backup(db, path), KVR_OK);
    EXPECT_DB(db, "backup(file exists)", kvr_backup(db, path), KVR_INVALID_ARG);
    EXPECT_DB(db, "backup(onto a directory)", kvr_backup(db, base_dir), KVR_INVALID_ARG);
}

/* ---- membership on a single-node replica ---------------------------------------------- */

static void check_membership(kvr *db) {
    kvr_buf b = empty_buf();
    EXPECT_DB(db, "add_node(id 0)", kvr_add_node(db, 0, "127.0.0.1:1"), KVR_INVALID_ARG);
    EXPECT_DB(db, "add_node(NULL addr)", kvr_add_node(db, 2, NULL), KVR_INVALID_ARG);
    EXPECT_DB(db, "add_node(empty addr)", kvr_add_node(db, 2, ""), KVR_INVALID_ARG);
    EXPECT_DB(db, "add_node(addr without port)", kvr_add_node(db, 2, "127.0.0.1"),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "add_node(addr with a bad port)", kvr_add_node(db, 2, "127.0.0.1:99999"),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "add_learner(id 0)", kvr_add_learner(db, 0, "127.0.0.1:1"), KVR_INVALID_ARG);
    EXPECT_DB(db, "add_learner(NULL addr)", kvr_add_learner(db, 2, NULL), KVR_INVALID_ARG);
    EXPECT_DB(db, "add_learner(addr without port)", kvr_add_learner(db, 2, "nowhere"),
              KVR_INVALID_ARG);
    EXPECT_DB(db, "remove_node(the only voter)", kvr_remove_node(db, 1), KVR_INVALID_ARG);
    EXPECT_DB(db, "remove_node(not a member)", kvr_remove_node(db, 99), KVR_INVALID_ARG);
    EXPECT_DB(db, "remove_node(id 0)", kvr_remove_node(db, 0), KVR_INVALID_ARG);
    EXPECT_DB(db, "transfer_leader(to itself, already leader)", kvr_transfer_leader(db, 1),
              KVR_OK);
    EXPECT_DB(db, "members(NULL out)", kvr_members(db, NULL), KVR_INVALID_ARG);
    EXPECT_DB(db, "members", kvr_members(db, &b), KVR_OK);
    const char *only_me = "[{\"id\":1,\"addr\":\"\",\"role\":\"voter\"}]";
    EXPECT_TRUE("members lists node 1 as the one voter",
                b.len == strlen(only_me) && buf_contains(b, only_me));
    kvr_buf_free(&b);
    EXPECT_DB(db, "put still works after the refused changes", kvr_put(db, u8("m"), 1, u8("1"), 1),
              KVR_OK);
}

/* A real addition to a replica that has no transport: node 2 can never answer. Each case on
 * its own replica, since an accepted change outlives the check. */
static void check_additions_without_transport(void) {
    kvr_buf b = empty_buf();
    kvr *db = open_replica("learner", PATIENT_MS);
    EXPECT_DB(db, "add_learner(2) to a node without transport", kvr_add_learner(db, 2, "127.0.0.1:1"),
              KVR_OK);
    EXPECT_DB(db, "put with an unreachable learner (not in the quorum)",
              kvr_put(db, u8("k"), 1, u8("v"), 1), KVR_OK);
    EXPECT_DB(db, "members", kvr_members(db, &b), KVR_OK);
    EXPECT_TRUE("members lists node 2 as a learner",
                buf_contains(b, "{\"id\":2,\"addr\":\"127.0.0.1:1\",\"role\":\"learner\"}"));
    kvr_buf_free(&b);
    EXPECT_DB(db, "remove_node(the learner)", kvr_remove_node(db, 2), KVR_OK);
    EXPECT_DB(db, "add_learner(2 again): removed ids are never reused",
              kvr_add_learner(db, 2, "127.0.0.1:1"), KVR_INVALID_ARG);
    EXPECT("close", kvr_close(db), KVR_OK);

    db = open_replica("voter", IMPATIENT_MS);
    EXPECT_DB(db, "transfer_leader(to a non-member) waits out the timeout",
              kvr_transfer_leader(db, 99), KVR_TIMEOUT);
    EXPECT_DB(db, "add_node(2) to a node without transport: one voter commits it",
              kvr_add_node(db, 2, "127.0.0.1:1"), KVR_OK);
    /* The leader steps down without a quorum: NO_LEADER, or TIMEOUT if the last attempt was
     * still waiting when the deadline came. */
    EXPECT_EITHER(db, "put now needs node 2, which never answers",
                  kvr_put(db, u8("k"), 1, u8("v"), 1), KVR_NO_LEADER, KVR_TIMEOUT);
    EXPECT_DB(db, "get_ex(stale) still reads locally",
              kvr_get_ex(db, u8("k"), 1, KVR_READ_STALE, &b), KVR_NOT_FOUND);
    EXPECT("close of a replica stuck without quorum", kvr_close(db), KVR_OK);

    db = open_replica("comma", PATIENT_MS);
    EXPECT_DB(db, "add_node(addr \"127.0.0.1:1,3=127.0.0.1:2\")",
              kvr_add_node(db, 2, "127.0.0.1:1,3=127.0.0.1:2"), KVR_INVALID_ARG);
    EXPECT_DB(db, "add_learner(addr \"127.0.0.1:1,3=127.0.0.1:2\")",
              kvr_add_learner(db, 2, "127.0.0.1:1,3=127.0.0.1:2"), KVR_INVALID_ARG);
    EXPECT_DB(db, "add_node(addr \"host name:1\")", kvr_add_node(db, 2, "host name:1"),
              KVR_INVALID_ARG);
    EXPECT("close", kvr_close(db), KVR_OK);
}

/* ---- a closed handle ------------------------------------------------------------------- */

static void check_closed_handle(kvr *db) {
    kvr_buf b = empty_buf();
    kvr_status_info st;
    kvr_iter *it = NULL;
    kvr_watcher *w = NULL;
    EXPECT_DB(db, "scan_prefix(before close)", kvr_scan_prefix(db, u8("p"), 1, 10, KVR_READ_STALE, &it),
              KVR_OK);
    EXPECT_DB(db, "watch(before close)", kvr_watch(db, NULL, 0, 0, &w), KVR_OK);
    EXPECT("close", kvr_close(db), KVR_OK);
    kvr_buf k = empty_buf(), v = empty_buf();
    EXPECT("iter_next(iterator of a closed replica): it holds copies", kvr_iter_next(it, &k, &v),
           KVR_OK);
    kvr_buf_free(&k);
    kvr_buf_free(&v);
    kvr_iter_free(it);
    kvr_event ev;
    memset(&ev, 0, sizeof ev);
    EXPECT("watch_next(watcher of a closed replica)", kvr_watch_next(w, 0, &ev), KVR_CLOSED);
    EXPECT("watch_next(watcher of a closed replica, long timeout)", kvr_watch_next(w, 60000, &ev),
           KVR_CLOSED);
    kvr_watch_free(w);
    EXPECT("close again", kvr_close(db), KVR_OK);
    EXPECT_DB(db, "put(closed)", kvr_put(db, u8("k"), 1, u8("v"), 1), KVR_CLOSED);
    EXPECT_TRUE("kvr_errmsg says closed", strstr(kvr_errmsg(db), "closed") != NULL);
    EXPECT_DB(db, "put(closed, NULL key): closed comes first", kvr_put(db, NULL, 1, NULL, 1),
              KVR_CLOSED);
    EXPECT_DB(db, "get(closed)", kvr_get(db, u8("k"), 1, &b), KVR_CLOSED);
    EXPECT_DB(db, "get(closed, NULL out)", kvr_get(db, u8("k"), 1, NULL), KVR_CLOSED);
    EXPECT_DB(db, "get_ex(closed)", kvr_get_ex(db, u8("k"), 1, KVR_READ_STALE, &b), KVR_CLOSED);
    EXPECT_DB(db, "delete(closed)", kvr_delete(db, u8("k"), 1), KVR_CLOSED);
    EXPECT_DB(db, "status(closed)", kvr_status(db, &st), KVR_CLOSED);
    EXPECT_DB(db, "add_node(closed)", kvr_add_node(db, 2, "127.0.0.1:1"), KVR_CLOSED);
    EXPECT_DB(db, "add_learner(closed)", kvr_add_learner(db, 2, "127.0.0.1:1"), KVR_CLOSED);
    EXPECT_DB(db, "remove_node(closed)", kvr_remove_node(db, 1), KVR_CLOSED);
    EXPECT_DB(db, "transfer_leader(closed)", kvr_transfer_leader(db, 1), KVR_CLOSED);
    EXPECT_DB(db, "members(closed)", kvr_members(db, &b), KVR_CLOSED);
    EXPECT_DB(db, "stats(closed)", kvr_stats(db, &b), KVR_CLOSED);
    char path[PATH_MAX];
    path_in_base(path, sizeof path, "backup-of-closed");
    EXPECT_DB(db, "backup(closed)", kvr_backup(db, path), KVR_CLOSED);
    EXPECT_DB(db, "put_ttl(closed)", kvr_put_ttl(db, u8("k"), 1, u8("v"), 1, 1000), KVR_CLOSED);
    kvr_batch_op op = {KVR_OP_PUT, u8("k"), 1, u8("v"), 1};
    EXPECT_DB(db, "batch(closed)", kvr_batch(db, &op, 1), KVR_CLOSED);
    EXPECT_DB(db, "cas(closed)", kvr_cas(db, u8("k"), 1, NULL, 0, 1, u8("v"), 1), KVR_CLOSED);
    EXPECT_DB(db, "append(closed)", kvr_append(db, u8("k"), 1, u8("v"), 1), KVR_CLOSED);
    it = NULL;
    w = NULL;
    EXPECT_DB(db, "scan(closed)", kvr_scan(db, NULL, 0, NULL, 0, 10, KVR_READ_STALE, &it),
              KVR_CLOSED);
    EXPECT_DB(db, "scan_prefix(closed)", kvr_scan_prefix(db, NULL, 0, 10, KVR_READ_STALE, &it),
              KVR_CLOSED);
    EXPECT_DB(db, "watch(closed)", kvr_watch(db, NULL, 0, 0, &w), KVR_CLOSED);
    EXPECT_TRUE("no call on a closed handle wrote an iterator or watcher", it == NULL && w == NULL);
    EXPECT_TRUE("no call on a closed handle wrote its out-param", b.ptr == NULL && b.len == 0);
    EXPECT("close a third time", kvr_close(db), KVR_OK);
}

/* ---- close racing calls ---------------------------------------------------------------- */

enum { WORKERS = 4, CLOSERS = 2, ROUNDS = 3 };

struct worker {
    kvr *db;
    int id;
    long calls;
    int saw_closed;
    int after_closed_ok; /* every call after the first KVR_CLOSED also said KVR_CLOSED */
    int bad_code;        /* first code outside {OK, NOT_FOUND, CLOSED}, 0 if none */
    const char *bad_call;
};

struct closer {
    kvr *db;
    int rc;
};

/* Kinds of call a worker makes in turn. */
enum { CALL_KINDS = 12 };

/* One of the calls a host makes, chosen by `i`; returns its code, with a CAS that finds
 * another value (right for that call) counted as OK. */
static int some_call(kvr *db, int id, long i, const char **name) {
    char key[32];
    int n = snprintf(key, sizeof key, "w%d-%ld", id, i % 64);
    kvr_buf b = empty_buf();
    kvr_status_info st;
    kvr_iter *it = NULL;
    kvr_batch_op ops[] = {{KVR_OP_PUT, u8(key), (size_t)n, u8("b"), 1},
                          {KVR_OP_DELETE, u8(key), (size_t)n, NULL, 0}};
    int rc;
    switch (i % CALL_KINDS) {
    case 0: *name = "put"; return kvr_put(db, u8(key), (size_t)n, u8("value"), 5);
    case 1:
        *name = "get";
        rc = kvr_get(db, u8(key), (size_t)n, &b);
        kvr_buf_free(&b);
        return rc;
    case 2:
        *name = "get_ex(stale)";
        rc = kvr_get_ex(db, u8(key), (size_t)n, KVR_READ_STALE, &b);
        kvr_buf_free(&b);
        return rc;
    case 3: *name = "delete"; return kvr_delete(db, u8(key), (size_t)n);
    case 4: *name = "status"; return kvr_status(db, &st);
    case 5:
        *name = "members";
        rc = kvr_members(db, &b);
        kvr_buf_free(&b);
        return rc;
    case 6: *name = "put_ttl"; return kvr_put_ttl(db, u8(key), (size_t)n, u8("t"), 1, 60000);
    case 7: *name = "batch"; return kvr_batch(db, ops, 2);
    case 8:
        *name = "cas";
        rc = kvr_cas(db, u8(key), (size_t)n, NULL, 0, 1, u8("c"), 1);
        return rc == KVR_CAS_FAILED ? KVR_OK : rc;
    case 9: *name = "append"; return kvr_append(db, u8(key), (size_t)n, u8("a"), 1);
    case 10:
        *name = "scan_prefix";
        rc = kvr_scan_prefix(db, u8("w"), 1, 100, KVR_READ_LINEARIZABLE, &it);
        kvr_iter_free(it);
        return rc;
    default:
        *name = "stats";
        rc = kvr_stats(db, &b);
        kvr_buf_free(&b);
        return rc;
    }
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    w->after_closed_ok = 1;
    int after_closed = 0;
    /* After the first KVR_CLOSED, one more call of each kind, all of which must say so. */
    for (long i = w->id; after_closed < CALL_KINDS; i++) {
        const char *name = "";
        int rc = some_call(w->db, w->id, i, &name);
        w->calls++;
        if (w->saw_closed) {
            after_closed++;
            if (rc != KVR_CLOSED) {
                w->after_closed_ok = 0;
            }
        } else if (rc == KVR_CLOSED) {
            w->saw_closed = 1;
        } else if (rc != KVR_OK && rc != KVR_NOT_FOUND && w->bad_code == 0) {
            w->bad_code = rc;
            w->bad_call = name;
        }
    }
    return NULL;
}

/* Blocks in kvr_watch_next with a long timeout, across the close. */
struct watcher_thread {
    kvr_watcher *w;
    int events; /* changes seen before the close */
    int rc;     /* the code that ended the wait */
};

static void *watcher_main(void *arg) {
    struct watcher_thread *t = arg;
    for (;;) {
        kvr_event ev;
        memset(&ev, 0, sizeof ev);
        t->rc = kvr_watch_next(t->w, 60000, &ev);
        if (t->rc != KVR_OK) {
            return NULL;
        }
        t->events++;
        kvr_event_free(&ev);
    }
}

static void *closer_main(void *arg) {
    struct closer *c = arg;
    c->rc = kvr_close(c->db);
    return NULL;
}

static void check_concurrent_close(void) {
    for (int round = 0; round < ROUNDS; round++) {
        char name[32];
        snprintf(name, sizeof name, "race-%d", round);
        kvr *db = open_replica(name, PATIENT_MS);
        struct watcher_thread wt_state = {NULL, 0, -999};
        pthread_t watcher;
        EXPECT_DB(db, "watch(for the race)", kvr_watch(db, NULL, 0, 0, &wt_state.w), KVR_OK);
        pthread_create(&watcher, NULL, watcher_main, &wt_state);
        struct worker w[WORKERS];
        pthread_t wt[WORKERS];
        for (int i = 0; i < WORKERS; i++) {
            memset(&w[i], 0, sizeof w[i]);
            w[i].db = db;
            w[i].id = i;
            pthread_create(&wt[i], NULL, worker_main, &w[i]);
        }
        sleep_ms(100 + 100 * round);
        struct closer c[CLOSERS];
        pthread_t ct[CLOSERS];
        for (int i = 0; i < CLOSERS; i++) {
            c[i].db = db;
            c[i].rc = -999;
            pthread_create(&ct[i], NULL, closer_main, &c[i]);
        }
        for (int i = 0; i < CLOSERS; i++) {
            pthread_join(ct[i], NULL);
        }
        for (int i = 0; i < WORKERS; i++) {
            pthread_join(wt[i], NULL);
        }
        pthread_join(watcher, NULL);
        kvr_watch_free(wt_state.w);
        {
            char what[96];
            snprintf(what, sizeof what, "round %d: a watcher blocked across the close (%d events)",
                     round, wt_state.events);
            EXPECT(what, wt_state.rc, KVR_CLOSED);
        }
        for (int i = 0; i < CLOSERS; i++) {
            char what[96];
            snprintf(what, sizeof what, "round %d: close from closer thread %d", round, i);
            EXPECT(what, c[i].rc, KVR_OK);
        }
        for (int i = 0; i < WORKERS; i++) {
            char what[160];
            snprintf(what, sizeof what,
                     "round %d: worker %d (%ld calls) saw only OK/NOT_FOUND, then CLOSED", round,
                     i, w[i].calls);
            if (w[i].bad_code != 0) {
                snprintf(what, sizeof what, "round %d: worker %d got %d (%s) from %s", round, i,
                         w[i].bad_code, kvr_result_str(w[i].bad_code), w[i].bad_call);
            }
            EXPECT_TRUE(what, w[i].bad_code == 0 && w[i].saw_closed && w[i].after_closed_ok);
        }
        EXPECT("close after the race", kvr_close(db), KVR_OK);
    }
}

/* ---- main ------------------------------------------------------------------------------ */

int main(void) {
    const char *tmp = getenv("TMPDIR");
    if (tmp == NULL || *tmp == '\0') {
        tmp = "/tmp";
    }
    if (strlen(tmp) > sizeof base_dir - 32) {
        fprintf(stderr, "TMPDIR is too long\n");
        return 2;
    }
    snprintf(base_dir, sizeof base_dir, "%s/kvr-abuse.XXXXXX", tmp);
    if (mkdtemp(base_dir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    check_version_and_result_strings();
    check_options();
    /* Before any replica's threads exist, so that the child of fork() is a whole process. */
    check_impossible_lengths();
    check_open();
    check_null_handle();

    kvr *db = open_replica("main", PATIENT_MS);
    check_keys_and_values(db);
    check_data_model(db);
    check_scans(db);
    check_watch(db);
    check_admin(db);
    check_membership(db);
    check_closed_handle(db);
    check_additions_without_transport();
    check_concurrent_close();

    nftw(base_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
