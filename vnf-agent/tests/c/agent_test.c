/*
 * A C "firmware" for tests/c_abi.rs: links the C ABI, registers a `files` callback, runs the
 * agent on a thread, and stops it from the main thread once the update with version
 * STOP_VERSION is applied.
 *
 * usage: agent_test <port> <key_hex> <state_dir> <instance_uuid>
 *
 * Prints one line per callback ("applied files v1 ...", "rejected files v2") and "OK" at the
 * end; exits nonzero with a message on any failure.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vnf_agent.h"

#define STOP_VERSION 3

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "agent_test: check failed: %s: ", #cond);           \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, "\n");                                              \
            exit(2);                                                            \
        }                                                                       \
    } while (0)

struct firmware {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    uint64_t last_version;
    int calls;
    const char *instance;
};

struct runner {
    sfc_agent *agent;
    int rc;
};

static int apply_files(const struct sfc_config_update *u, char *err, size_t err_len,
                       void *user) {
    struct firmware *fw = user;
    int rc = 0;

    CHECK(strcmp(u->service, "files") == 0, "service %s", u->service);
    CHECK(strcmp(u->instance_str, fw->instance) == 0, "instance %s", u->instance_str);
    if (u->payload_len == 3 && memcmp(u->payload, "bad", 3) == 0) {
        snprintf(err, err_len, "files: payload '%.*s' is not acceptable", (int)u->payload_len,
                 (const char *)u->payload);
        printf("rejected files v%llu\n", (unsigned long long)u->version);
        rc = 1;
    } else {
        printf("applied files v%llu config %s payload %.*s\n", (unsigned long long)u->version,
               u->config_id_str, (int)u->payload_len, (const char *)u->payload);
    }
    fflush(stdout);

    pthread_mutex_lock(&fw->lock);
    fw->calls++;
    fw->last_version = u->version;
    pthread_cond_broadcast(&fw->changed);
    pthread_mutex_unlock(&fw->lock);
    return rc;
}

static void *run(void *arg) {
    struct runner *r = arg;
    r->rc = sfc_agent_run(r->agent);
    if (r->rc != 0) {
        fprintf(stderr, "agent_test: sfc_agent_run: %s\n", sfc_last_error());
    }
    return NULL;
}

int main(int argc, char **argv) {
    struct firmware fw;
    struct runner r;
    pthread_t thread;
    sfc_agent *agent;

    CHECK(argc == 5, "usage: agent_test <port> <key_hex> <state_dir> <instance>");
    memset(&fw, 0, sizeof fw);
    pthread_mutex_init(&fw.lock, NULL);
    pthread_cond_init(&fw.changed, NULL);
    fw.instance = argv[4];

    /* Errors come back as NULL / -1 with a message. */
    CHECK(sfc_agent_new(argv[1], "not hex", argv[3]) == NULL, "bad key accepted");
    CHECK(sfc_last_error() != NULL && strstr(sfc_last_error(), "key") != NULL, "message: %s",
          sfc_last_error());
    CHECK(sfc_agent_register(NULL, "files", apply_files, &fw) == -1, "NULL agent accepted");

    agent = sfc_agent_new(argv[1], argv[2], argv[3]);
    CHECK(agent != NULL, "sfc_agent_new: %s", sfc_last_error());
    CHECK(sfc_agent_register(agent, "Files; rm -rf /", apply_files, &fw) == -1,
          "bad service name accepted");
    CHECK(sfc_agent_register(agent, "files", NULL, &fw) == -1, "NULL callback accepted");
    CHECK(sfc_agent_set_instance(agent, argv[4]) == 0, "set_instance: %s", sfc_last_error());
    CHECK(sfc_agent_register(agent, "files", apply_files, &fw) == 0, "register: %s",
          sfc_last_error());

    r.agent = agent;
    r.rc = -1;
    CHECK(pthread_create(&thread, NULL, run, &r) == 0, "pthread_create");

    pthread_mutex_lock(&fw.lock);
    while (fw.last_version < STOP_VERSION) {
        pthread_cond_wait(&fw.changed, &fw.lock);
    }
    pthread_mutex_unlock(&fw.lock);

    /* From another thread than the one running the agent; its Ack still goes out. */
    sfc_agent_stop(agent);
    CHECK(pthread_join(thread, NULL) == 0, "pthread_join");
    CHECK(r.rc == 0, "sfc_agent_run returned %d", r.rc);
    sfc_agent_free(agent);
    printf("OK after %d callbacks\n", fw.calls);
    return 0;
}
