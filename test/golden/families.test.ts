import { goldenSuite } from './golden.js';
import { FAMILY_CASES } from './cases.js';

goldenSuite('golden outputs (family fixtures)', 'families.json', FAMILY_CASES);
