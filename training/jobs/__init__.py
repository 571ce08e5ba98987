"""A version's training job: its state changes (transitions), the training process (run), its supervision
(processes, worker, sweep) and what it reports (progress, status, events). Entry points for django-q2 stay in
training.tasks, whose dotted paths queued rows store."""
