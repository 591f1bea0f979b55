/*
 * vnf_agent.h - C ABI of the VNF configuration agent SDK (crate vnf-agent).
 *
 * Link with libvnf_agent.a (plus -lpthread -ldl -lm -lrt -lutil -lgcc_s) or libvnf_agent.so.
 *
 * The agent keeps an authenticated session with the controller over the host channel (a
 * virtio-serial port by default), resynchronises after every reconnect, and calls the
 * callback registered for a service with each configuration update. Every version of a
 * service is applied at most once and never after a newer one; the applied versions are kept
 * in state_dir across restarts.
 *
 * Threads: configure the agent, then call sfc_agent_run, which blocks. Callbacks run on the
 * thread that called sfc_agent_run, one at a time. sfc_agent_stop may be called from any
 * thread, from a signal handler, or from inside a callback.
 *
 * Errors: functions return -1 (or NULL) and set a message that sfc_last_error returns on the
 * same thread.
 *
 * Logging: set SFC_AGENT_LOG (e.g. "info" or "vnf_agent=debug") before sfc_agent_new to log to
 * stderr.
 */
#ifndef VNF_AGENT_H
#define VNF_AGENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Size of the err_buf passed to callbacks (the protocol's bound on a rejection reason). */
#define SFC_ERROR_BUF_LEN 4096

/* Default virtio-serial port name. */
#define SFC_DEFAULT_PORT "org.opensfc.relay.0"

/* SMBIOS OEM string prefix that carries the instance key as 64 hex digits. */
#define SFC_SMBIOS_KEY_PREFIX "org.opensfc.relay.key:"

typedef struct sfc_agent sfc_agent;

/* One configuration update. Every pointer is valid only during the callback. */
struct sfc_config_update {
    uint8_t instance[16];      /* instance UUID, big-endian bytes */
    uint8_t config_id[16];     /* config UUID, big-endian bytes */
    char instance_str[37];     /* the same, "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx\0" */
    char config_id_str[37];
    const char *service;       /* NUL-terminated service name */
    uint64_t version;          /* increases with every change of this service's config */
    const uint8_t *payload;    /* the service's configuration, payload_len bytes */
    size_t payload_len;
};

/*
 * Applies an update completely, or leaves the previous configuration in place. Returns 0 when
 * applied; otherwise writes a NUL-terminated reason (sent to the controller) into err_buf, of
 * err_buf_len bytes, and returns nonzero.
 */
typedef int (*sfc_apply_fn)(const struct sfc_config_update *update, char *err_buf,
                            size_t err_buf_len, void *user);

/*
 * Creates an agent.
 *   port:      NULL for SFC_DEFAULT_PORT; a virtio-serial port name ("org.opensfc.relay.0"),
 *              a device path ("/dev/vport0p1"), "uart:/dev/ttyS1" or "uart:/dev/ttyS1@115200",
 *              or "unix:/path/to/socket" (development and tests without a guest).
 *   key_hex:   the instance key, 64 hex digits; NULL to read it from the SMBIOS OEM strings.
 *   state_dir: where applied versions are kept (created if missing); NULL for memory only.
 * Returns NULL on error.
 */
sfc_agent *sfc_agent_new(const char *port, const char *key_hex, const char *state_dir);

/* Only pushes for this instance (a UUID string) are applied. Returns 0 or -1. */
int sfc_agent_set_instance(sfc_agent *agent, const char *instance_uuid);

/*
 * Registers the callback of a service (1-64 bytes of [a-z0-9._-]); user is passed back to it.
 * Returns 0, or -1 for a NULL argument, an invalid or duplicate name, or a running agent.
 */
int sfc_agent_register(sfc_agent *agent, const char *service, sfc_apply_fn apply, void *user);

/*
 * Runs the agent on the calling thread until sfc_agent_stop. Returns 0 after a stop, -1 on a
 * fatal error. An agent runs once.
 */
int sfc_agent_run(sfc_agent *agent);

/*
 * Makes sfc_agent_run return after writing out pending acknowledgements (within a second).
 * Async-signal-safe; a stop before sfc_agent_run starts makes it return at once. NULL is
 * ignored.
 */
void sfc_agent_stop(sfc_agent *agent);

/* Releases an agent that is not running. NULL is ignored. */
void sfc_agent_free(sfc_agent *agent);

/*
 * The message of the calling thread's last failed call, or NULL. Valid until the next failing
 * call on this thread.
 */
const char *sfc_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* VNF_AGENT_H */
