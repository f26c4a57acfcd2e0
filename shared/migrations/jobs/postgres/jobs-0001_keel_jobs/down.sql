DROP TABLE keel_job_schedules;
DROP TABLE keel_jobs;
