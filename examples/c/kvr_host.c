/*
 * kvr_host: a C program that hosts one kvr replica, with the same flags and REPL as the
 * kvr CLI.
 *
 *   kvr_host --node-id 1 --listen 127.0.0.1:7001 \
 *            --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --dir data/1
 *
 * Flags: --KEY VALUE for any kvr option key (dashes or underscores), --option KEY=VALUE,
 * --join. With no flags: a single-node replica on ./kvr-data.
 * REPL: the kvr CLI's commands (`help` lists them); one reply line per command.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvr.h"

#define LINE_MAX_BYTES 65536

static const char *role_name(int role) {
    switch (role) {
    case KVR_ROLE_LEADER: return "leader";
    case KVR_ROLE_CANDIDATE: return "candidate";
    case KVR_ROLE_LEARNER: return "learner";
    default: return "follower";
    }
}

/* Sets option "KEY" from a "--some-key" flag, turning dashes into underscores. */
static int set_flag(kvr_options *o, const char *flag, const char *value) {
    char key[128];
    size_t n = strlen(flag);
    if (n >= sizeof key) {
        fprintf(stderr, "kvr_host: flag too long: %s\n", flag);
        return -1;
    }
    for (size_t i = 0; i <= n; i++) key[i] = flag[i] == '-' ? '_' : flag[i];
    if (kvr_options_set(o, key, value) != KVR_OK) {
        fprintf(stderr, "kvr_host: %s\n", kvr_options_errmsg(o));
        return -1;
    }
    return 0;
}

static int parse_args(kvr_options *o, int argc, char **argv) {
    if (kvr_options_set(o, "dir", "kvr-data") != KVR_OK) return -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--join") == 0) {
            if (set_flag(o, "join", "true") != 0) return -1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0 || i + 1 >= argc) {
            fprintf(stderr, "kvr_host: bad argument %s\n", a);
            return -1;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--option") == 0) {
            char kv[1024];
            char *eq;
            if (strlen(v) >= sizeof kv || (eq = strchr(strcpy(kv, v), '=')) == NULL) {
                fprintf(stderr, "kvr_host: --option needs KEY=VALUE\n");
                return -1;
            }
            *eq = '\0';
            if (set_flag(o, kv, eq + 1) != 0) return -1;
        } else if (set_flag(o, a + 2, v) != 0) {
            return -1;
        }
    }
    return 0;
}

static void print_error(kvr *db, int rc) {
    printf("ERR %d: %s\n", rc, kvr_errmsg(db));
}

static void cmd_get(kvr *db, const char *key, int consistency) {
    kvr_buf b = {NULL, 0};
    int rc = kvr_get_ex(db, (const uint8_t *)key, strlen(key), consistency, &b);
    if (rc == KVR_OK) {
        printf("%.*s\n", (int)b.len, (const char *)b.ptr);
        kvr_buf_free(&b);
    } else if (rc == KVR_NOT_FOUND) {
        printf("NOT_FOUND\n");
    } else {
        print_error(db, rc);
    }
}

static void cmd_status(kvr *db) {
    kvr_status_info s;
    int rc = kvr_status(db, &s);
    if (rc != KVR_OK) {
        print_error(db, rc);
        return;
    }
    printf("node=%llu leader=%llu term=%llu role=%s commit=%llu applied=%llu last=%llu "
           "applied_at_open=%llu entries_applied=%llu\n",
           (unsigned long long)s.node_id, (unsigned long long)s.leader_id, (unsigned long long)s.term,
           role_name(s.role), (unsigned long long)s.commit_index, (unsigned long long)s.applied_index,
           (unsigned long long)s.last_index, (unsigned long long)s.applied_index_at_open,
           (unsigned long long)s.entries_applied);
}

/* Prints `s` as a JSON string. */
static void json_str(const uint8_t *s, size_t n) {
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned c = s[i];
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar((int)c);
    }
    putchar('"');
}

static void report(kvr *db, int rc) {
    if (rc == KVR_OK) printf("OK\n");
    else if (rc == KVR_CAS_FAILED) printf("CAS_FAILED\n");
    else print_error(db, rc);
}

static void print_owned(kvr *db, int rc, kvr_buf *b) {
    if (rc != KVR_OK) {
        print_error(db, rc);
        return;
    }
    printf("%.*s\n", (int)b->len, (const char *)b->ptr);
    kvr_buf_free(b);
}

#define ARGS_MAX 1024

/* `batch put K V del K ...` */
static void cmd_batch(kvr *db, int argc, char **argv) {
    static kvr_batch_op ops[ARGS_MAX];
    size_t n = 0;
    for (int i = 1; i < argc;) {
        if (strcmp(argv[i], "put") == 0 && i + 2 < argc) {
            ops[n++] = (kvr_batch_op){KVR_OP_PUT, (const uint8_t *)argv[i + 1], strlen(argv[i + 1]),
                                      (const uint8_t *)argv[i + 2], strlen(argv[i + 2])};
            i += 3;
        } else if (strcmp(argv[i], "del") == 0 && i + 1 < argc) {
            ops[n++] = (kvr_batch_op){KVR_OP_DELETE, (const uint8_t *)argv[i + 1], strlen(argv[i + 1]), NULL, 0};
            i += 2;
        } else {
            printf("ERR usage: batch put KEY VALUE | del KEY ...\n");
            return;
        }
    }
    report(db, kvr_batch(db, ops, n));
}

/* `scan START END LIMIT` (`-` for an open end) and `prefix PREFIX LIMIT`. */
static void cmd_scan(kvr *db, int argc, char **argv) {
    int is_scan = strcmp(argv[0], "scan") == 0;
    if (argc != (is_scan ? 4 : 3)) {
        printf("ERR usage: scan START END LIMIT | prefix PREFIX LIMIT\n");
        return;
    }
    const char *a = strcmp(argv[1], "-") == 0 ? "" : argv[1];
    size_t limit = (size_t)strtoull(argv[argc - 1], NULL, 10);
    kvr_iter *it = NULL;
    int rc;
    if (is_scan) {
        const char *b = strcmp(argv[2], "-") == 0 ? "" : argv[2];
        rc = kvr_scan(db, (const uint8_t *)a, strlen(a), (const uint8_t *)b, strlen(b), limit,
                      KVR_READ_LINEARIZABLE, &it);
    } else {
        rc = kvr_scan_prefix(db, (const uint8_t *)a, strlen(a), limit, KVR_READ_LINEARIZABLE, &it);
    }
    if (rc != KVR_OK) {
        print_error(db, rc);
        return;
    }
    printf("{\"items\":[");
    kvr_buf k, v;
    for (int first = 1; kvr_iter_next(it, &k, &v) == KVR_OK; first = 0) {
        printf(first ? "[" : ",[");
        json_str(k.ptr, k.len);
        putchar(',');
        json_str(v.ptr, v.len);
        putchar(']');
        kvr_buf_free(&k);
        kvr_buf_free(&v);
    }
    printf("],\"next\":");
    kvr_buf next;
    if (kvr_iter_continuation(it, &next) == KVR_OK) {
        json_str(next.ptr, next.len);
        kvr_buf_free(&next);
    } else {
        printf("null");
    }
    printf("}\n");
    kvr_iter_free(it);
}

/* `watch PREFIX FROM_INDEX COUNT TIMEOUT_MS` (`-` for all keys). */
static void cmd_watch(kvr *db, int argc, char **argv) {
    if (argc != 5) {
        printf("ERR usage: watch PREFIX FROM_INDEX COUNT TIMEOUT_MS\n");
        return;
    }
    const char *prefix = strcmp(argv[1], "-") == 0 ? "" : argv[1];
    kvr_watcher *w = NULL;
    int rc = kvr_watch(db, (const uint8_t *)prefix, strlen(prefix), strtoull(argv[2], NULL, 10), &w);
    if (rc != KVR_OK) {
        print_error(db, rc);
        return;
    }
    static const char *kinds[] = {"?", "put", "delete", "expire"};
    unsigned long count = strtoul(argv[3], NULL, 10);
    uint32_t timeout = (uint32_t)strtoul(argv[4], NULL, 10);
    printf("[");
    for (unsigned long i = 0; i < count; i++) {
        kvr_event ev;
        rc = kvr_watch_next(w, timeout, &ev);
        if (rc != KVR_OK) break;
        printf("%s{\"index\":%llu,\"kind\":\"%s\",\"key\":", i ? "," : "", (unsigned long long)ev.index,
               kinds[ev.kind >= 1 && ev.kind <= 3 ? ev.kind : 0]);
        json_str(ev.key.ptr, ev.key.len);
        printf(",\"value\":");
        json_str(ev.value.ptr, ev.value.len);
        printf("}");
        kvr_event_free(&ev);
    }
    printf("]\n");
    kvr_watch_free(w);
}

/* The commands with a fixed number of whitespace-separated arguments. */
static int execute_words(kvr *db, int argc, char **argv) {
    const char *c = argv[0];
    const uint8_t *a1 = argc > 1 ? (const uint8_t *)argv[1] : NULL;
    size_t l1 = argc > 1 ? strlen(argv[1]) : 0;
    if (strcmp(c, "putttl") == 0 && argc == 4) {
        report(db, kvr_put_ttl(db, a1, l1, (const uint8_t *)argv[3], strlen(argv[3]), strtoull(argv[2], NULL, 10)));
    } else if (strcmp(c, "append") == 0 && argc == 3) {
        report(db, kvr_append(db, a1, l1, (const uint8_t *)argv[2], strlen(argv[2])));
    } else if (strcmp(c, "cas") == 0 && argc == 4) {
        report(db, kvr_cas(db, a1, l1, (const uint8_t *)argv[2], strlen(argv[2]), 0, (const uint8_t *)argv[3],
                           strlen(argv[3])));
    } else if (strcmp(c, "casnew") == 0 && argc == 3) {
        report(db, kvr_cas(db, a1, l1, NULL, 0, 1, (const uint8_t *)argv[2], strlen(argv[2])));
    } else if (strcmp(c, "lget") == 0 && argc == 2) {
        cmd_get(db, argv[1], KVR_READ_LEASE);
    } else if (strcmp(c, "batch") == 0) {
        cmd_batch(db, argc, argv);
    } else if (strcmp(c, "scan") == 0 || strcmp(c, "prefix") == 0) {
        cmd_scan(db, argc, argv);
    } else if (strcmp(c, "watch") == 0) {
        cmd_watch(db, argc, argv);
    } else if (strcmp(c, "stats") == 0 || strcmp(c, "members") == 0) {
        kvr_buf b;
        int rc = c[0] == 's' ? kvr_stats(db, &b) : kvr_members(db, &b);
        print_owned(db, rc, &b);
    } else if (strcmp(c, "backup") == 0 && argc == 2) {
        report(db, kvr_backup(db, argv[1]));
    } else if ((strcmp(c, "add") == 0 || strcmp(c, "learner") == 0) && argc == 3) {
        uint64_t id = strtoull(argv[1], NULL, 10);
        report(db, c[0] == 'a' ? kvr_add_node(db, id, argv[2]) : kvr_add_learner(db, id, argv[2]));
    } else if (strcmp(c, "remove") == 0 && argc == 2) {
        report(db, kvr_remove_node(db, strtoull(argv[1], NULL, 10)));
    } else if (strcmp(c, "transfer") == 0 && argc == 2) {
        report(db, kvr_transfer_leader(db, strtoull(argv[1], NULL, 10)));
    } else {
        return 0;
    }
    return 1;
}

/* Runs one command line; returns 0 to go on, 1 to quit. */
static int execute(kvr *db, char *line) {
    line[strcspn(line, "\r\n")] = '\0';
    static char copy[LINE_MAX_BYTES];
    strcpy(copy, line);
    static char *argv[ARGS_MAX];
    int argc = 0;
    for (char *t = strtok(copy, " \t"); t != NULL; t = strtok(NULL, " \t")) {
        if (argc == ARGS_MAX) {
            printf("ERR more than %d words on one line\n", ARGS_MAX);
            return 0;
        }
        argv[argc++] = t;
    }
    if (argc == 0) return 0;
    const char *cmd = argv[0];
    if (strcmp(cmd, "quit") == 0 || strcmp(cmd, "exit") == 0) return 1;
    const char *key = argc > 1 ? argv[1] : "";
    const uint8_t *k = (const uint8_t *)key;
    size_t klen = strlen(key);
    if (strcmp(cmd, "put") == 0) {
        if (argc < 2) {
            printf("ERR usage: put KEY VALUE\n");
            return 0;
        }
        /* The value is the rest of the line, spaces included. */
        const char *val = line + strspn(line, " \t") + strlen(cmd);
        val += strspn(val, " \t");
        val += strlen(key);
        val += strspn(val, " \t");
        report(db, kvr_put(db, k, klen, (const uint8_t *)val, strlen(val)));
    } else if (strcmp(cmd, "get") == 0) {
        cmd_get(db, key, KVR_READ_LINEARIZABLE);
    } else if (strcmp(cmd, "sget") == 0) {
        cmd_get(db, key, KVR_READ_STALE);
    } else if (strcmp(cmd, "delete") == 0 || strcmp(cmd, "del") == 0) {
        report(db, kvr_delete(db, k, klen));
    } else if (strcmp(cmd, "status") == 0) {
        cmd_status(db);
    } else if (strcmp(cmd, "help") == 0) {
        printf("commands: put KEY VALUE | putttl KEY TTL_MS VALUE | get KEY | lget KEY | sget KEY | "
               "delete KEY | append KEY VALUE | cas KEY EXPECTED NEW | casnew KEY NEW | "
               "batch put K V del K ... | scan START END LIMIT | prefix PREFIX LIMIT | "
               "watch PREFIX FROM COUNT TIMEOUT_MS | status | stats | members | add ID ADDR | "
               "learner ID ADDR | remove ID | transfer ID | backup PATH | quit\n");
    } else if (!execute_words(db, argc, argv)) {
        printf("ERR unknown command \"%s\" (try help)\n", cmd);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (kvr_version() != KVR_VERSION_NUMBER) {
        fprintf(stderr, "kvr_host: library version %u does not match header %u\n", kvr_version(),
                (unsigned)KVR_VERSION_NUMBER);
        return 1;
    }
    kvr_options *o = kvr_options_new();
    if (o == NULL || parse_args(o, argc, argv) != 0) {
        kvr_options_free(o);
        return 2;
    }
    kvr *db = NULL;
    int rc = kvr_open(o, &db);
    if (rc != KVR_OK) {
        fprintf(stderr, "kvr_host: cannot open replica: %s (%s)\n", kvr_options_errmsg(o), kvr_result_str(rc));
        kvr_options_free(o);
        return 1;
    }
    kvr_options_free(o);

    static char line[LINE_MAX_BYTES];
    while (fgets(line, sizeof line, stdin) != NULL) {
        int quit = execute(db, line);
        fflush(stdout);
        if (quit) break;
    }
    rc = kvr_close(db);
    if (rc != KVR_OK) {
        fprintf(stderr, "kvr_host: close: %s\n", kvr_result_str(rc));
        return 1;
    }
    return 0;
}
