"""Feedback files: JSONL/CSV import (all or nothing, errors by line) and export, from the CLI and the admin."""
import io
import json
from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from feedback import importexport, review
from feedback.models import Feedback, Review
from feedback.selectors import agent_agreement
from policies.models import Agent, PolicyVersion

pytestmark = pytest.mark.django_db


def jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def do_import(data: bytes, fmt: str, agent_name: str = "support"):
    return importexport.import_feedback(agent_name=agent_name, stream=io.BytesIO(data), fmt=fmt)


def stored(agent_name: str = "support") -> list[tuple]:
    return list(
        Feedback.objects.filter(agent__name=agent_name).order_by("created_at", "id")
        .values_list("prompt", "response", "score", "run_id", "notes", "source")
    )


def test_jsonl_import_uses_the_api_field_names():
    result = do_import(jsonl(
        {"prompt": "What is the capital of France?", "response": "Paris.", "score": 0.9, "runId": "run_1",
         "notes": "Accurate answer"},
        "",  # blank lines are ignored
        {"prompt": "2+2?", "response": "5", "score": 0.1},
        {"prompt": "Unreviewed?", "response": "Maybe", "score": None},
        {"prompt": "No score key", "response": "ok"},
    ), "jsonl")
    assert (result.created, result.existing) == (4, 0)
    assert stored() == [
        ("What is the capital of France?", "Paris.", 0.9, "run_1", "Accurate answer", "import"),
        ("2+2?", "5", 0.1, "", "", "import"),
        ("Unreviewed?", "Maybe", None, "", "", "import"),
        ("No score key", "ok", None, "", "", "import"),
    ]


def test_csv_import_with_quoted_newlines_empty_score_and_excel_bom():
    data = (
        "\ufeffprompt,response,score,runId,notes\r\n"
        '"Write a haiku","Old pond,\nfrog jumps in\nsplash",0.8,r1,"has ""quotes"""\r\n'
        "Unscored one,answer,,,\r\n"
    ).encode()
    assert do_import(data, "csv").created == 2
    assert stored() == [
        ("Write a haiku", "Old pond,\nfrog jumps in\nsplash", 0.8, "r1", 'has "quotes"', "import"),
        ("Unscored one", "answer", None, "", "", "import"),
    ]


def test_jsonl_problems_are_reported_by_line_and_nothing_is_stored():
    Agent.objects.create(name="support")
    data = jsonl(
        {"prompt": "ok", "response": "fine", "score": 0.5},
        {"prompt": "ok", "response": "fine", "score": 0.5},
        '{"prompt": "broken", ',
        '["not", "an", "object"]',
        {"prompt": "q", "response": "a", "score": "high"},
        {"prompt": "q", "score": 0.5},
        {"prompt": "q", "response": "a", "scroe": 0.5},
        {"prompt": "ok", "response": "fine", "score": 0.5},
    )
    with pytest.raises(importexport.ImportFailed) as failed:
        do_import(data, "jsonl")
    lines = [line for line, _ in failed.value.errors]
    assert lines == [3, 4, 5, 6, 7]
    messages = dict(failed.value.errors)
    assert messages[3].startswith("not valid JSON")
    assert messages[5] == "score must be a number between 0 and 1 (or null: awaiting review), got 'high'"
    assert messages[6] == "response is required and must be non-empty text"
    assert messages[7] == "unknown field 'scroe'"
    assert Feedback.objects.count() == 0


def test_a_score_out_of_range_is_reported_on_its_line():
    rows = [{"prompt": f"q{i}", "response": "a", "score": 0.5} for i in range(5)]
    rows.append({"prompt": "too good", "response": "a", "score": 1.5})
    with pytest.raises(importexport.ImportFailed) as failed:
        do_import(jsonl(*rows), "jsonl")
    assert failed.value.errors == [(6, "score must be a number between 0 and 1 (or null: awaiting review), got 1.5")]
    assert Feedback.objects.count() == 0


def test_a_conflict_found_after_earlier_batches_were_written_rolls_everything_back():
    """All rows are well-formed, so storing starts; the last one reuses a stored runId with other content."""
    do_import(jsonl({"prompt": "stored before", "response": "a", "score": 0.5, "runId": "old"}), "jsonl")
    rows = [{"prompt": f"q{i}", "response": "a", "score": 0.5, "runId": f"r{i}"}
            for i in range(importexport.BATCH_SIZE + 10)]
    rows.append({"prompt": "something else", "response": "a", "score": 0.5, "runId": "old"})
    with pytest.raises(importexport.ImportFailed) as failed:
        do_import(jsonl(*rows), "jsonl")
    ((line, message),) = failed.value.errors
    assert line == len(rows) and "runId 'old' is already stored" in message
    assert Feedback.objects.count() == 1


def test_a_run_id_repeated_with_other_content_in_a_file_names_both_lines():
    """Found before anything is stored, across the file's batches (a later batch used to find the first stored)."""
    rows = [{"prompt": f"q{i}", "response": "a", "score": 0.5, "runId": f"r{i}"} for i in range(3)]
    rows += [rows[0], {**rows[1], "score": 0.9}]  # the same record again is a retry; another score is not
    with pytest.raises(importexport.ImportFailed) as failed:
        do_import(jsonl(*rows), "jsonl")
    assert failed.value.errors == [(5, "runId 'r1' is repeated with different content (lines 2 and 5)")]
    assert Feedback.objects.count() == 0


def test_jsonl_fields_are_the_api_names():
    with pytest.raises(importexport.ImportFailed) as failed:
        do_import(jsonl({"prompt": "q", "response": "a", "run_id": "r1"}, {"prompt": "\u200b", "response": "a"}),
                  "jsonl")
    assert failed.value.errors == [
        (1, "unknown field 'run_id' (did you mean 'runId'?)"),
        (2, "prompt must contain visible text, not only whitespace or invisible characters (such as U+200B)"),
    ]


def test_csv_header_and_row_shape_problems():
    with pytest.raises(importexport.ImportFailed) as failed:
        do_import(b"prompt,answer,score\nq,a,0.5\n", "csv")
    assert failed.value.errors == [
        (1, "unknown column(s) 'answer'; missing column(s) response "
            "(columns are prompt, response, score, runId, notes, policyVersion, reviewer, reviewedAt, source, "
            "reviews)"),
    ]
    with pytest.raises(importexport.ImportFailed) as failed:
        do_import(b'prompt,response,score\n"multi\nline",a,0.5\nq,a\nq,a,zero\n', "csv")
    assert failed.value.errors == [
        (4, "expected 3 values, found 2"),
        (5, "score must be a number between 0 and 1 (or null: awaiting review), got 'zero'"),
    ]


def test_empty_and_non_utf8_files():
    with pytest.raises(importexport.ImportFailed, match="no feedback rows"):
        do_import(b"\n\n", "jsonl")
    with pytest.raises(importexport.ImportFailed, match="not UTF-8"):
        do_import('{"prompt": "caf\u00e9", "response": "a"}\n'.encode("latin-1"), "jsonl")


def test_reimporting_the_same_run_ids_stores_nothing_twice():
    data = jsonl(*[{"prompt": f"q{i}", "response": "a", "score": 0.5, "runId": f"r{i}"} for i in range(3)])
    assert do_import(data, "jsonl").created == 3
    again = do_import(data, "jsonl")
    assert (again.created, again.existing) == (0, 3)
    assert "3 were already there" in again.summary()
    assert Feedback.objects.count() == 3


TRICKY = [
    ("Plain", "Answer", 0.9, "r1", "ok"),
    ("Commas, \"quotes\" and\nnewlines", "Line 1\n  indented line 2\n", 0.35, "", "multi\nline note"),
    ("Unicode: caf\u00e9 \u2014 \u6771\u4eac \U0001f600", "\u00e9\u00e8", None, "r3", ""),
    ("Zero", "score zero", 0.0, "r4", ""),
]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_then_import_round_trips(tmp_path, fmt):
    source = Agent.objects.create(name="source")
    for prompt, response, score, run_id, notes in TRICKY:
        Feedback.objects.create(agent=source, prompt=prompt, response=response, score=score, run_id=run_id, notes=notes)
    path = tmp_path / f"out.{fmt}"
    call_command("export_feedback", "--agent", "source", "-o", str(path), stderr=io.StringIO())
    call_command("import_feedback", str(path), "--agent", "copy", stdout=io.StringIO())
    assert [row[:5] for row in stored("copy")] == TRICKY


EVERY_FIELD = ("prompt", "response", "score", "run_id", "notes", "policy_version__number", "reviewer__username",
               "reviewed_at", "source")


def every_field(agent_name: str) -> list[tuple]:
    return list(Feedback.objects.filter(agent__name=agent_name).order_by("created_at", "id").values_list(*EVERY_FIELD))


def agent_with_versions(name: str, *numbers: int) -> Agent:
    agent = Agent.objects.create(name=name)
    for number in numbers:
        PolicyVersion.objects.create(agent=agent, number=number, status="trained")
    return agent


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_round_trip_into_a_fresh_agent_keeps_every_stored_field(tmp_path, fmt):
    rita = User.objects.create_user("rita")
    source = agent_with_versions("source", 1, 2)
    agent_with_versions("copy", 1, 2)
    v1, v2 = source.versions.order_by("number")
    at = datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC)
    for prompt, score, run_id, notes, version, reviewer, reviewed_at, origin in [
        ("Scored in the admin", 0.9, "r1", "ok", v1, rita, at, "admin"),
        ("Scored by the agent", 0.4, "r2", "", v2, None, None, "api"),
        ("Awaiting review", None, "", "", v2, None, None, "api"),
        ("Imported, commas, \"quotes\"\nand lines", 0.0, "", "multi\nline", None, rita, at, "import"),
    ]:
        Feedback.objects.create(agent=source, prompt=prompt, response="a", score=score, run_id=run_id, notes=notes,
                                policy_version=version, reviewer=reviewer, reviewed_at=reviewed_at, source=origin)
    path = tmp_path / f"out.{fmt}"
    call_command("export_feedback", "--agent", "source", "-o", str(path), stderr=io.StringIO())

    call_command("import_feedback", str(path), "--agent", "copy", stdout=io.StringIO())

    assert every_field("copy") == every_field("source")
    assert every_field("copy")[0][5:] == (1, "rita", at, "admin")
    # A retry: the rows with a runId by their runId, those without by their content (issue 20 item 11).
    again = importexport.import_feedback(agent_name="copy", stream=path.open("rb"), fmt=fmt)
    assert (again.created, again.existing) == (0, 4) and Feedback.objects.filter(agent__name="copy").count() == 4


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_reimporting_an_export_is_a_no_op_for_records_without_a_run_id(tmp_path, fmt):
    """Issue 20 item 11: records without a runId (exported as "runId": "") were stored again on every re-import,
    2 -> 4 -> 6 rows. Without a runId, a row is identified by its prompt, response and policyVersion; identical
    records stay as many as they were, and a new row in the file is still imported."""
    agent = agent_with_versions("support", 1)
    agent_with_versions("copy", 1)
    v1 = agent.versions.get()
    for prompt, response, version in [("Hi", "Hello", None), ("Hi", "Hello", None), ("Hi", "Hello", v1),
                                      ("Bye", "Goodbye", None)]:
        Feedback.objects.create(agent=agent, prompt=prompt, response=response, policy_version=version, score=0.5)
    path = tmp_path / f"out.{fmt}"
    call_command("export_feedback", "--agent", "support", "-o", str(path), stderr=io.StringIO())
    before = every_field("support")
    for _ in range(2):
        result = importexport.import_feedback(agent_name="support", stream=path.open("rb"), fmt=fmt)
        assert (result.created, result.existing) == (0, 4)
        assert every_field("support") == before
    assert "4 were already there (same runId, or without one the same prompt, response" in result.summary()
    # The same file into another agent stores all four, the duplicates included; one more row is one more record.
    assert importexport.import_feedback(agent_name="copy", stream=path.open("rb"), fmt=fmt).created == 4
    with path.open("a") as out:
        out.write(json.dumps({"prompt": "Hi", "response": "Hello", "score": 0.5, "runId": "", "notes": "",
                              "policyVersion": None, "reviewer": None, "reviewedAt": None, "source": "api",
                              "reviews": []}) + "\n" if fmt == "jsonl" else "Hi,Hello,0.5,,,,,,api,\n")
    result = importexport.import_feedback(agent_name="support", stream=path.open("rb"), fmt=fmt)
    assert (result.created, result.existing) == (1, 4)
    assert Feedback.objects.filter(agent=agent, prompt="Hi", policy_version=None).count() == 3


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_200000_character_prompt_round_trips(tmp_path, fmt):
    """Issue 20 item 10: a CSV cell over 131,072 characters (the csv module's default limit) could not be
    re-imported ("field larger than field limit"), though the API had stored it."""
    source = Agent.objects.create(name="source")
    long_prompt = 'Long, "quoted"\nline ' * 10_000  # 200,000 characters with commas, quotes and newlines
    assert len(long_prompt) == 200_000
    Feedback.objects.create(agent=source, prompt=long_prompt, response="r" * 150_000, score=0.5, run_id="long")
    Feedback.objects.create(agent=source, prompt="short", response="a", score=0.1)
    path = tmp_path / f"out.{fmt}"
    call_command("export_feedback", "--agent", "source", "-o", str(path), stderr=io.StringIO())
    result = importexport.import_feedback(agent_name="copy", stream=path.open("rb"), fmt=fmt)
    assert result.created == 2
    assert [row[:4] for row in stored("copy")] == [(long_prompt, "r" * 150_000, 0.5, "long"), ("short", "a", 0.1, "")]


def test_a_version_the_agent_does_not_have_is_named_on_its_line_and_nothing_is_stored():
    agent_with_versions("support", 1)
    rows = [{"prompt": "q", "response": "a", "policyVersion": "v1"}, {"prompt": "q", "response": "a"},
            {"prompt": "q", "response": "a", "policyVersion": "v7"}, {"prompt": "q", "response": "a",
                                                                       "policyVersion": "7"}]
    with pytest.raises(importexport.ImportFailed) as failed:
        do_import(jsonl(*rows), "jsonl")
    assert failed.value.errors == [
        (4, 'policyVersion must be a version of the agent such as "v3" (or null: not known), got \'7\'')]
    with pytest.raises(importexport.ImportFailed) as failed:
        do_import(jsonl(*rows[:3]), "jsonl")
    assert failed.value.errors == [(3, "policyVersion 'v7' is not a version of agent 'support'")]
    assert not Feedback.objects.exists()


def test_an_exported_reviewer_without_a_user_here_is_left_empty_and_named_in_the_summary():
    User.objects.create_user("rita")
    data = (b"prompt,response,score,policyVersion,reviewer,reviewedAt,source\n"
            b"q1,a,0.9,,rita,2026-12-01T07:30:00Z,admin\n"
            b"q2,a,0.8,,olga,2026-12-01T07:31:00,\n"
            b"q3,a,0.7,,,,api\n")
    result = do_import(data, "csv")
    assert result.unknown_reviewers == ("olga",) and "reviewers without a user here were left empty (olga)" in (
        result.summary())
    assert [row[5:] for row in every_field("support")] == [
        (None, "rita", datetime(2026, 12, 1, 7, 30, tzinfo=UTC), "admin"),
        (None, None, datetime(2026, 12, 1, 7, 31, tzinfo=UTC), "import"),  # no offset: UTC
        (None, None, None, "api"),  # scored by the agent: no reviewer, even though someone imported it
    ]


def test_a_file_without_review_columns_has_the_importing_user_as_reviewer_of_its_scores():
    user = User.objects.create_user("importer")
    importexport.import_feedback(agent_name="support", stream=io.BytesIO(b"prompt,response,score\nq,a,0.5\nq2,a,\n"),
                                 fmt="csv", user=user)
    rows = every_field("support")
    assert [(row[6], row[8]) for row in rows] == [("importer", "import"), (None, "import")]
    assert rows[0][7] is not None and rows[1][7] is None


def test_stored_facts_are_checked_by_line():
    rows = [{"prompt": "q", "response": "a", "source": "email"}, {"prompt": "q", "response": "a", "reviewedAt": "soon"},
            {"prompt": "q", "response": "a", "reviewer": 7}, {"prompt": "q", "response": "a", "reviewed_at": None}]
    with pytest.raises(importexport.ImportFailed) as failed:
        do_import(jsonl(*rows), "jsonl")
    assert failed.value.errors == [
        (1, "source must be one of api, admin, import (or empty: import), got 'email'"),
        (2, "reviewedAt must be a date and time in ISO 8601 such as 2026-12-01T07:30:00+00:00 (or empty), got 'soon'"),
        (3, "reviewer must be a username of at most 150 characters"),
        (4, "unknown field 'reviewed_at' (did you mean 'reviewedAt'?)"),
    ]


def test_export_jsonl_to_stdout_has_exactly_the_api_fields_and_the_stored_facts():
    agent = Agent.objects.create(name="support")
    v2 = PolicyVersion.objects.create(agent=agent, number=2, status="trained")
    rita = User.objects.create_user("rita")
    reviewed = datetime(2026, 12, 1, 7, 30, 0, 123456, tzinfo=UTC)
    item = Feedback.objects.create(agent=agent, prompt="q", response="a", score=0.25, run_id="r", notes="n",
                                   policy_version=v2, reviewer=rita, reviewed_at=reviewed, source="admin")
    Review.objects.create(feedback=item, reviewer=rita, score=0.25, notes="n")
    Review.objects.filter(feedback=item).update(updated_at=reviewed)
    Feedback.objects.create(agent=agent, prompt="q2", response="a2")
    out = io.StringIO()
    call_command("export_feedback", "--agent", "support", stdout=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows == [
        {"prompt": "q", "response": "a", "score": 0.25, "runId": "r", "notes": "n", "policyVersion": "v2",
         "reviewer": "rita", "reviewedAt": "2026-12-01T07:30:00.123456+00:00", "source": "admin",
         "reviews": [{"reviewer": "rita", "score": 0.25, "notes": "n",
                      "reviewedAt": "2026-12-01T07:30:00.123456+00:00"}]},
        {"prompt": "q2", "response": "a2", "score": None, "runId": "", "notes": "", "policyVersion": None,
         "reviewer": None, "reviewedAt": None, "source": "api", "reviews": []},
    ]
    out = io.StringIO()
    call_command("export_feedback", "--agent", "support", "--format", "csv", "--scored-only", stdout=out)
    assert out.getvalue() == (
        "prompt,response,score,runId,notes,policyVersion,reviewer,reviewedAt,source,reviews\n"
        'q,a,0.25,r,n,v2,rita,2026-12-01T07:30:00.123456+00:00,admin,"[{""reviewer"": ""rita"", ""score"": 0.25, '
        '""notes"": ""n"", ""reviewedAt"": ""2026-12-01T07:30:00.123456+00:00""}]"\n')


def test_import_command_reports_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl({"prompt": "q", "response": "a"}, "{oops"))
    err = io.StringIO()
    with pytest.raises(CommandError, match="Nothing imported: 1 problem"):
        call_command("import_feedback", str(path), "--agent", "support", stderr=err)
    assert f"{path}:2: not valid JSON" in err.getvalue()
    with pytest.raises(CommandError, match="Cannot tell the format"):
        call_command("import_feedback", str(tmp_path / "x.txt"), "--agent", "support")
    with pytest.raises(CommandError, match="No such file"):
        call_command("import_feedback", str(tmp_path / "missing.csv"), "--agent", "support")
    with pytest.raises(CommandError, match="No agent named 'nobody'"):
        call_command("export_feedback", "--agent", "nobody")


# --- admin -------------------------------------------------------------------------------------


@pytest.fixture
def importer():
    user = User.objects.create_superuser("admin", password="pw")
    client = Client()
    client.force_login(user)
    return client


def test_admin_upload_imports_and_shows_the_agents_feedback(importer):
    upload = SimpleUploadedFile("batch.csv", b"prompt,response,score\nq1,a1,0.9\nq2,a2,\n")
    response = importer.post(reverse("admin:feedback_feedback_import"), {"agent": "support", "file": upload})
    agent = Agent.objects.get(name="support")
    assert response.status_code == 302 and response["Location"].endswith(f"?agent__id__exact={agent.pk}")
    assert [row[:3] for row in stored()] == [("q1", "a1", 0.9), ("q2", "a2", None)]
    page = importer.get(response["Location"]).content.decode()
    assert "Imported 2 feedback for support." in page


def test_admin_upload_lists_bad_lines_and_stores_nothing(importer):
    upload = SimpleUploadedFile("batch.jsonl", jsonl({"prompt": "q", "response": "a", "score": 0.5}, "nope"))
    response = importer.post(reverse("admin:feedback_feedback_import"), {"agent": "support", "file": upload})
    html = response.content.decode()
    assert response.status_code == 200 and "Nothing was imported" in html
    assert '<td class="n3-num">2</td><td>not valid JSON' in html
    assert Feedback.objects.count() == 0


def test_admin_upload_needs_a_known_extension_or_format(importer):
    upload = SimpleUploadedFile("batch.txt", b"prompt,response\nq,a\n")
    response = importer.post(reverse("admin:feedback_feedback_import"), {"agent": "support", "file": upload})
    assert "Cannot tell the format of &#x27;batch.txt&#x27;" in response.content.decode()
    upload = SimpleUploadedFile("batch.txt", b"prompt,response\nq,a\n")
    importer.post(reverse("admin:feedback_feedback_import"), {"agent": "support", "file": upload, "format": "csv"})
    assert Feedback.objects.count() == 1


def test_admin_export_downloads_what_the_list_shows(importer):
    agent = Agent.objects.create(name="support")
    Feedback.objects.create(agent=agent, prompt="scored", response="a", score=0.9)
    Feedback.objects.create(agent=agent, prompt="pending", response="a")
    response = importer.get(reverse("admin:feedback_feedback_export"), {"score_band": "unscored", "format": "csv"})
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith('attachment; filename="feedback-support-')
    body = b"".join(response.streaming_content).decode()
    assert body == ("prompt,response,score,runId,notes,policyVersion,reviewer,reviewedAt,source,reviews\n"
                    "pending,a,,,,,,,api,\n")


def test_admin_import_needs_the_add_permission():
    from django.contrib.auth.models import Permission

    user = User.objects.create_user("rita", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_feedback", "change_feedback"]))
    client = Client()
    client.force_login(user)
    assert client.get(reverse("admin:feedback_feedback_import")).status_code == 403
    assert client.get(reverse("admin:feedback_feedback_export")).status_code == 200


def test_an_imported_score_with_its_reviewer_is_that_reviewers_review(django_user_model):
    """Agreement and "my recent reviews" read Review rows: a file's reviewed scores become them, as queue scores do."""
    from feedback.services import import_feedback_batch

    rita = django_user_model.objects.create_user("rita")
    records = [
        {"prompt": "Q1?", "response": "A1.", "score": 0.8, "run_id": "r1", "notes": "fine", "reviewer": "rita",
         "reviewed_at": "2026-11-30T10:00:00+00:00"},
        {"prompt": "Q2?", "response": "A2.", "score": 0.3, "run_id": "r2", "notes": "", "reviewer": "nobody-here",
         "reviewed_at": "2026-11-30T10:00:00+00:00"},
        {"prompt": "Q3?", "response": "A3.", "score": None, "run_id": "r3", "notes": ""},
    ]
    import_feedback_batch(agent_name="imp", records=records, source="import", user=rita)
    assert list(Review.objects.values_list("feedback__run_id", "reviewer__username", "score", "notes")) == [
        ("r1", "rita", 0.8, "fine")
    ]


# --- an item's reviews -------------------------------------------------------------------------


def reviews_of(agent_name: str) -> list[tuple]:
    """Each item's reviews (reviewer, score, notes, last changed), items and reviews in the order they were given."""
    return list(Review.objects.filter(feedback__agent__name=agent_name).order_by("feedback__created_at", "feedback_id",
                                                                                    "id")
                .values_list("feedback__prompt", "reviewer__username", "score", "notes", "updated_at"))


def overlap_two_agent() -> Agent:
    """Two reviewers score each item (the queue's own path): some agree, some do not, one item still waits for its
    second review, one was edited later, and one review's reviewer was deleted since (alpha still counts it)."""
    agent = Agent.objects.create(name="source", review_overlap=2)
    rita, olga, gone = (User.objects.create_user(name) for name in ("rita", "olga", "gone"))
    scores = [("agree", 0.9, 0.8), ("disagree", 0.2, 0.9), ("both low", 0.1, 0.3), ("waiting", 0.6, None),
              ("gone's", 0.7, 0.5)]
    for prompt, first, second in scores:
        item = Feedback.objects.create(agent=agent, prompt=prompt, response="a", run_id=prompt)
        review.score_feedback(feedback_id=item.pk, user=rita, score=first, notes=f"rita on {prompt}")
        if second is not None:
            review.score_feedback(feedback_id=item.pk, user=gone if prompt == "gone's" else olga, score=second,
                                  notes="" if prompt == "agree" else f"second on {prompt}")
    edited = Review.objects.get(feedback__prompt="both low", reviewer=olga)
    review.edit_review(review_id=edited.pk, user=olga, score=0.4, notes="on second thought")
    gone.delete()
    return agent


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_round_trip_keeps_every_review_and_the_agreement(tmp_path, fmt):
    source = overlap_two_agent()
    before = agent_agreement(agent=source)
    assert before.overall.items == 4 and before.overall.alpha is not None
    path = tmp_path / f"out.{fmt}"
    call_command("export_feedback", "--agent", "source", "-o", str(path), stderr=io.StringIO())

    result = importexport.import_feedback(agent_name="copy", stream=path.open("rb"), fmt=fmt)

    assert (result.created, result.skipped_reviewers) == (5, ())
    assert reviews_of("copy") == reviews_of("source")  # reviewer (None: deleted), score, notes and time
    assert [row[1:4] for row in reviews_of("copy")][:4] == [
        ("rita", 0.9, "rita on agree"), ("olga", 0.8, ""), ("rita", 0.2, "rita on disagree"),
        ("olga", 0.9, "second on disagree")]
    assert every_field("copy") == every_field("source")  # each item's score as exported, not recomputed
    after = agent_agreement(agent=Agent.objects.get(name="copy"))
    assert after.overall.alpha == pytest.approx(before.overall.alpha)
    assert (after.overall.items, after.overall.scores) == (before.overall.items, before.overall.scores) == (4, 8)
    assert [(p.first, p.second, p.agreement.items) for p in after.pairs] == [
        (p.first, p.second, p.agreement.items) for p in before.pairs] == [("olga", "rita", 3)]
    assert after.pairs[0].agreement.alpha == pytest.approx(before.pairs[0].agreement.alpha)


def test_reviews_by_users_missing_here_are_left_out_and_named_and_an_empty_list_is_as_before():
    User.objects.create_user("rita")
    at = "2026-11-30T10:00:00+00:00"
    result = do_import(jsonl(
        {"prompt": "q1", "response": "a", "score": 0.5, "reviewer": "rita", "reviewedAt": at,
         "reviews": [{"reviewer": "rita", "score": 0.4, "notes": "meh", "reviewedAt": at},
                     {"reviewer": "olga", "score": 0.6, "notes": "", "reviewedAt": at}]},
        {"prompt": "q2", "response": "a", "score": 0.7, "reviewer": "rita", "reviewedAt": at, "reviews": []},
    ), "jsonl")
    assert result.skipped_reviewers == ("olga",)
    assert "reviews by reviewers without a user here were left out (olga)" in result.summary()
    assert every_field("support")[0][2] == 0.5  # the item's score as the file says, not its one review's
    assert reviews_of("support") == [
        ("q1", "rita", 0.4, "meh", datetime(2026, 11, 30, 10, tzinfo=UTC)),
        ("q2", "rita", 0.7, "", reviews_of("support")[1][4]),  # no list: the item's reviewer's score, as before
    ]


@pytest.mark.parametrize("reviews, message", [
    ("great", 'reviews must be a list of reviews such as [{"reviewer": "rita", "score": 0.8, "notes": "", '
              '"reviewedAt": "2026-12-01T07:30:00+00:00"}] (or empty), got \'great\''),
    ([0.5], "reviews[0] must be an object with reviewer, score, notes, reviewedAt, got 0.5"),
    ([{"reviewer": "rita", "score": 1.5}], "reviews[0].score must be a number between 0 and 1, got 1.5"),
    ([{"reviewer": "rita"}], "reviews[0].score must be a number between 0 and 1, got None"),
    ([{"reviewer": "rita", "score": 0.5, "stars": 3}],
     "reviews[0].stars is not a field of a review (reviewer, score, notes, reviewedAt)"),
    ([{"reviewer": "rita", "score": 0.5}, {"reviewer": "rita", "score": 0.6}],
     "reviews[1].reviewer repeats 'rita': an item has one review per reviewer"),
    ([{"reviewer": 7, "score": 0.5}],
     "reviews[0].reviewer must be a username of at most 150 characters (or null: a deleted user)"),
    ([{"reviewer": "rita", "score": 0.5, "reviewedAt": "soon"}],
     "reviews[0].reviewedAt must be a date and time in ISO 8601 such as 2026-12-01T07:30:00+00:00 (or empty), "
     "got 'soon'"),
])
def test_a_bad_reviews_value_is_refused_naming_it(reviews, message):
    User.objects.create_user("rita")
    with pytest.raises(importexport.ImportFailed) as failed:
        do_import(jsonl({"prompt": "ok", "response": "a", "score": 0.5},
                        {"prompt": "q", "response": "a", "score": 0.5, "reviews": reviews}), "jsonl")
    assert failed.value.errors == [(2, message)]
    assert not Feedback.objects.exists() and not Review.objects.exists()


def test_a_csv_reviews_cell_that_is_not_json_is_refused_on_its_line():
    data = b'prompt,response,score,reviews\nq,a,0.5,\nq2,a,0.5,"[{""reviewer"": ""rita"", ""score"": 0.5"\n'
    with pytest.raises(importexport.ImportFailed) as failed:
        do_import(data, "csv")
    ((line, message),) = failed.value.errors
    assert line == 3 and message.startswith("reviews must be a list of reviews") and message.endswith(
        "got '[{\"reviewer\": \"rita\", \"score\": 0.5'")
