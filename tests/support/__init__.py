"""What the tests share and are not tests themselves: the tiny model and your-own-model fixtures, the servers a test
starts (PostgreSQL, Redis, S3, Ray, the web server), the `microscope` command run as a process, the live store's
helpers, and the readers of what a store holds."""
