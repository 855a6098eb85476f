import { goldenSuite } from './golden.js';
import { PIPELINE_CASES } from './cases.js';

goldenSuite(
  'golden outputs (pipelines, second half)',
  'pipelines-b.json',
  PIPELINE_CASES.filter((_, i) => i % 2 === 1),
);
