/*
 * kvr_host: a C program that hosts one kvr replica, with the same flags and REPL as the
 * kvr CLI.
 *
 *   kvr_host --node-id 1 --listen 127.0.0.1:7001 \
 *            --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --dir data/1
 *
 * Flags: --KEY VALUE for any kvr option key (dashes or underscores), --option KEY=VALUE,
 * --join. With no flags: a single-node replica on ./kvr-data.
 * REPL: put KEY VALUE | get KEY | sget KEY | delete KEY | status | quit.
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

/* Runs one command line; returns 0 to go on, 1 to quit. */
static int execute(kvr *db, char *line) {
    char *cmd = strtok(line, " \t\r\n");
    if (cmd == NULL) return 0;
    char *rest = strtok(NULL, "\r\n");
    char *key = rest ? strtok(rest, " \t") : NULL;
    char *val = key ? strtok(NULL, "") : NULL;
    if (val) val += strspn(val, " \t");
    if (strcmp(cmd, "quit") == 0 || strcmp(cmd, "exit") == 0) return 1;
    const uint8_t *k = (const uint8_t *)(key ? key : "");
    size_t klen = key ? strlen(key) : 0;
    if (strcmp(cmd, "put") == 0) {
        if (key == NULL) {
            printf("ERR usage: put KEY VALUE\n");
            return 0;
        }
        int rc = kvr_put(db, k, klen, (const uint8_t *)(val ? val : ""), val ? strlen(val) : 0);
        if (rc == KVR_OK) printf("OK\n"); else print_error(db, rc);
    } else if (strcmp(cmd, "get") == 0) {
        cmd_get(db, key ? key : "", KVR_READ_LINEARIZABLE);
    } else if (strcmp(cmd, "sget") == 0) {
        cmd_get(db, key ? key : "", KVR_READ_STALE);
    } else if (strcmp(cmd, "delete") == 0 || strcmp(cmd, "del") == 0) {
        int rc = kvr_delete(db, k, klen);
        if (rc == KVR_OK) printf("OK\n"); else print_error(db, rc);
    } else if (strcmp(cmd, "status") == 0) {
        cmd_status(db);
    } else if (strcmp(cmd, "help") == 0) {
        printf("commands: put KEY VALUE | get KEY | sget KEY | delete KEY | status | quit\n");
    } else {
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
