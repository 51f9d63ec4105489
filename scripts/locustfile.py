"""HTTP workload for Locust: tasks and the library mix, against a running bibliomq.

    scripts/up && bibliomq-api seed          # a system with the demo catalogue
    pip install locust
    locust -f scripts/locustfile.py --host http://127.0.0.1:8080
    # or headless, 50 users for two minutes:
    locust -f scripts/locustfile.py --host http://127.0.0.1:8080 \
           --headless -u 50 -r 10 -t 2m

Not run by CI. The same workload without Python: `bibliomq run FILE --rate R
--report report.html` (see the README). A refusal by a library rule (404 for
an unknown loan, 409 not_available, loan_limit_reached, a rejected renewal)
counts as a success here: the system answered correctly. Set
BIBLIOMQ_API_TOKEN when the API requires a token.
"""

import os
import random
import time

from locust import HttpUser, between, task

# The demo catalogue of `bibliomq-api seed` (core/src/library/seed.rs): the
# well-known titles, the generated ones (978-84-50-...), the named patrons
# and p0001..p0290, the branches of BIBLIOMQ_BRANCHES.
CLASSICS = ["9788437604947", "9788497592208", "9780140449266"]
TITLES = ["quijote", "sombra del viento", "crimen y castigo"]
NAMED = ["ana", "luis", "marta", "jorge", "lucia", "pablo", "sofia", "diego", "elena", "carmen"]
BRANCHES = os.environ.get("BIBLIOMQ_LOCUST_BRANCHES", "central,norte").split(",")
GENERATED_TITLES = int(os.environ.get("BIBLIOMQ_LOCUST_TITLES", "1200"))
GENERATED_PATRONS = int(os.environ.get("BIBLIOMQ_LOCUST_PATRONS", "290"))


def isbn13(first12: str) -> str:
    total = sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(first12))
    return first12 + str((10 - total % 10) % 10)


def random_isbn() -> str:
    if random.random() < 0.3:
        return random.choice(CLASSICS)
    return isbn13("97884%07d" % (5_000_000 + random.randrange(GENERATED_TITLES)))


def random_patron() -> str:
    if random.random() < 0.3:
        return random.choice(NAMED)
    return "p%04d" % random.randint(1, GENERATED_PATRONS)


def headers():
    token = os.environ.get("BIBLIOMQ_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def accept_refusals(response, *ok):
    """Marks library refusals (and the given statuses) as successes."""
    if response.status_code in ok or response.status_code in (404, 409):
        response.success()
    else:
        response.failure(f"{response.status_code}: {response.text[:200]}")


class TaskUser(HttpUser):
    """Submits tasks and follows them to their result."""

    weight = 1
    wait_time = between(0.1, 0.5)

    def submit(self, action, payload):
        with self.client.post(
            "/v1/tasks",
            json={"action": action, "payload": payload},
            headers=headers(),
            name="POST /v1/tasks",
            catch_response=True,
        ) as r:
            if r.status_code != 202:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return None
            return r.json()["id"]

    def follow(self, task_id, deadline_s=30):
        end = time.monotonic() + deadline_s
        pause = 0.01
        while time.monotonic() < end:
            r = self.client.get(f"/v1/tasks/{task_id}", headers=headers(), name="GET /v1/tasks/{id}")
            if r.status_code == 200 and r.json()["state"] in ("succeeded", "failed", "dead"):
                return r.json()
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
        return None

    @task(5)
    def sum_numbers(self):
        numbers = ",".join(str(random.randint(1, 1000)) for _ in range(random.randint(2, 50)))
        task_id = self.submit("sum", numbers)
        if task_id:
            self.follow(task_id)

    @task(2)
    def fibonacci(self):
        task_id = self.submit("fib", random.randint(10, 5000))
        if task_id:
            done = self.follow(task_id)
            if done and done["state"] == "succeeded":
                self.client.get(
                    f"/v1/tasks/{task_id}/result", headers=headers(), name="GET /v1/tasks/{id}/result"
                )

    @task(2)
    def words(self):
        text = " ".join(random.choice(["en", "un", "lugar", "de", "la", "mancha", "libro"]) for _ in range(40))
        task_id = self.submit(random.choice(["upper", "wordcount"]), text)
        if task_id:
            self.follow(task_id)

    @task(1)
    def list_tasks(self):
        self.client.get("/v1/tasks?limit=20", headers=headers(), name="GET /v1/tasks")


class LibraryUser(HttpUser):
    """A desk: look-ups most of the time, loans, renewals and returns."""

    weight = 3
    wait_time = between(0.2, 1.0)

    def on_start(self):
        self.loans = []  # (loan id, patron) this user made and has not returned

    @task(6)
    def search(self):
        self.client.get(
            "/v1/books", params={"title": random.choice(TITLES)}, headers=headers(), name="GET /v1/books?title"
        )

    @task(4)
    def book(self):
        with self.client.get(
            f"/v1/books/{random_isbn()}", headers=headers(), name="GET /v1/books/{isbn}", catch_response=True
        ) as r:
            accept_refusals(r, 200)

    @task(3)
    def patron_loans(self):
        with self.client.get(
            f"/v1/patrons/{random_patron()}/loans",
            headers=headers(),
            name="GET /v1/patrons/{id}/loans",
            catch_response=True,
        ) as r:
            accept_refusals(r, 200)

    @task(3)
    def loan(self):
        patron = random_patron()
        with self.client.post(
            "/v1/loans",
            json={"isbn": random_isbn(), "patron": patron, "branch": random.choice(BRANCHES)},
            headers=headers(),
            name="POST /v1/loans",
            catch_response=True,
        ) as r:
            accept_refusals(r, 201)
            if r.status_code == 201:
                self.loans.append((r.json()["loan"]["id"], patron))

    @task(2)
    def renew(self):
        if self.loans:
            loan_id, _ = random.choice(self.loans)
            self.circulate("/v1/renewals", loan_id)

    @task(2)
    def give_back(self):
        if self.loans:
            loan_id, _ = self.loans.pop(random.randrange(len(self.loans)))
            self.circulate("/v1/returns", loan_id)

    def circulate(self, path, loan_id):
        with self.client.post(
            path,
            json={"loan_id": loan_id, "branch": random.choice(BRANCHES)},
            headers=headers(),
            name=f"POST {path}",
            catch_response=True,
        ) as r:
            accept_refusals(r, 202)
            if r.status_code == 202:
                op = r.json()["operation_id"]
                self.client.get(f"/v1/operations/{op}", headers=headers(), name="GET /v1/operations/{id}")

    @task(1)
    def branches(self):
        self.client.get("/v1/branches", headers=headers(), name="GET /v1/branches")
