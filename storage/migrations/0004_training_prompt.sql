-- The system prompt a job's training file teaches with (the most common one in the file, found at check time):
-- chat, /ask and /compare use it by default, so the fine-tuned model is asked the way it was trained.
ALTER TABLE jobs ADD COLUMN training_system_prompt TEXT;
