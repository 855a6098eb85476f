import { goldenSuite } from './golden.js';
import { PIPELINE_CASES } from './cases.js';

goldenSuite(
  'golden outputs (pipelines, first half)',
  'pipelines-a.json',
  PIPELINE_CASES.filter((_, i) => i % 2 === 0),
);
