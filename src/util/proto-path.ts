import * as path from 'node:path';

/** The repository's proto/ directory (this file runs from dist/src/util/). */
export const PROTO_DIR = path.resolve(__dirname, '../../../proto');
