/**
 * Page limits of the read calls, one value for both doors (the gRPC storage service and the ZEO
 * door): a client asking for more entries gets at most this many.
 */

/** History entries one call returns at most (ZODB's history(oid, size); gRPC History). */
export const HISTORY_ENTRIES_MAX = 1000;
/** Undo log entries one call returns at most (ZODB's undoLog/undoInfo; gRPC UndoLog). */
export const UNDO_LOG_ENTRIES_MAX = 1000;
