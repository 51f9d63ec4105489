// Pages with nothing of their own (not found): the shared header only.
import { start } from './common.js';

start();
