/*
 * Between the loader's model and the snapshot file: what a save writes
 * and what a load puts back. The format itself is sql/snapfile.c's.
 */
#ifndef TG_LOADER_FILE_H
#define TG_LOADER_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "shm/snapshot.h"
#include "sql/resolve.h"
#include "sql/snapfile.h"

/*
 * Write every account, rule and SIP user of m (host names from r) to path. Blocks
 * on the disk: the loader calls it in a child it forked, or at exit.
 * Returns 0, or -1 with errno.
 */
int loader_file_save(const char *path, const snap_model_t *m, const resolve_t *r, uint64_t built_ms,
                     snapfile_info_t *info);

/*
 * Put what path holds into m, an empty model, and its host-name rules into
 * r with their last addresses. Returns 0, or -1 with the reason (errno
 * ENOENT: no file); after a failure m and r may hold part of the file and
 * must be emptied by the caller.
 */
int loader_file_load(const char *path, snap_model_t *m, resolve_t *r, uint32_t cap_accounts,
                     uint32_t cap_rules, uint32_t cap_users, snapfile_info_t *info, char *reason,
                     size_t reasonlen);

#endif
