-- The system prompt most examples of a waiting start's training file use, found while its card was made (the file
-- is parsed once there), so recording the job needs neither the staged file nor a second parse.
ALTER TABLE pending_starts ADD COLUMN training_prompt TEXT;
