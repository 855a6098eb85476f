/** Members averaged as stored: no permutation of intermediate units. */
import type { Alignment } from './common.js';

export const alignNone: Alignment = { name: 'none', summary: 'average as stored', needs: 'none' };
