/** quantize's resume files: the generic hidden-state resume of src/pipeline/resume.ts (re-exported for existing importers). */
export { loadResumeState, loadStagedPlan, PLAN_FILE, RESUME_FILE, resumeKey, saveResumeState, saveStagedPlan, type ResumeState } from '../pipeline/resume.js';
