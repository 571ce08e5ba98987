"""The REST API of the spec: feedback in, training requests, policy versions out.

Each view validates its input with a serializer, calls one service or selector, and serializes the
result. Errors are raised, never caught here: n3site.exceptions.exception_handler answers them.
"""
import dataclasses

from django.http import Http404, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.serializers import PolymorphicProxySerializerExtension
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import serializers, status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from feedback import importexport
from feedback import selectors as feedback_selectors
from feedback.models import Feedback
from feedback.services import record_feedback, record_feedback_batch, update_feedback
from policies import selectors
from policies.models import agent_name_validator
from training import comparisons as blind_comparisons
from training import deployment, services
from training import selectors as training_selectors
from training.jobs import events

from .comparison_serializers import (
    CompareQuerySerializer,
    ComparisonPageSerializer,
    ComparisonQuerySerializer,
    ComparisonRequestSerializer,
    ComparisonSerializer,
    VersionComparisonSerializer,
)
from .feedback_serializers import (
    EXPORT_FORMATS,
    FeedbackInputSerializer,
    FeedbackPageSerializer,
    FeedbackQuerySerializer,
    FeedbackSerializer,
    FeedbackUpdateSerializer,
    StoredFeedbackSerializer,
    feedback_data,
    stored_feedback_data,
    validated_feedback,
    validated_update,
)
from .pagination import FeedbackCursorPagination
from .permissions import shown_to
from .renderers import EXPORT_RENDERERS
from .serializers import (
    TRAFFIC_REQUEST,
    AgentSerializer,
    DeploymentSerializer,
    DryRunSerializer,
    EventPageSerializer,
    EventQuerySerializer,
    EventSerializer,
    PolicyVersionSerializer,
    PolicyVersionSummarySerializer,
    PromotionSerializer,
    TrainPolicyRequestSerializer,
    traffic_request,
)


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="What went wrong, for a person")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False,
        help_text='Validation errors by field as sent: "score", "rewardModelConfig.numEpochs", "[3].score"',
    )


AGENT = OpenApiParameter(
    "agent", str, OpenApiParameter.PATH, pattern=agent_name_validator.regex.pattern.replace(r"\Z", "$"),  # ECMA
    description="Agent name: 1-100 letters, digits, '_' or '-' (other names are refused with 400 or 404)",
)
VERSION = OpenApiParameter("version", str, OpenApiParameter.PATH, pattern=r"^v[0-9]+$", description='"v1", "v2", ...')
COMPARISON = OpenApiParameter(
    "comparison", int, OpenApiParameter.PATH, description="The blind comparison's id (`id` in its body)",
)
RUN_ID = OpenApiParameter(
    "run_id", str, OpenApiParameter.PATH, pattern=r"^[\s\S]*[^/]$",
    description="The record's runId, percent-encoded (its agent's idempotency key)",
)


def _errors(*codes: int, media_type: str | None = None) -> dict:
    """The error responses by status; with ``media_type``, documented under that type only (a view that also answers
    files answers its errors in JSON)."""
    meaning = {
        400: "Invalid input", 401: "No or invalid credentials", 403: "Missing permission",
        404: "Unknown agent, version or comparison", 409: "Conflicts with the current state", 413: "Body too large",
        415: "Body is not JSON",
    }
    return {(code, media_type) if media_type else code: OpenApiResponse(ErrorSerializer, description=meaning[code])
            for code in codes}


class NonEmptyListProxySerializer(PolymorphicProxySerializer):
    """A PolymorphicProxySerializer whose list variants say ``minItems: 1``: the feedback view refuses an empty
    list (400), and drf-spectacular does not carry a ListSerializer's ``allow_empty=False`` into the schema."""


class NonEmptyListProxySerializerExtension(PolymorphicProxySerializerExtension):
    target_class = NonEmptyListProxySerializer

    def map_serializer(self, auto_schema, direction):
        schema = super().map_serializer(auto_schema, direction)
        for variant in schema.get("oneOf", []):
            if variant.get("type") == "array":
                variant["minItems"] = 1
        return schema


FEEDBACK_REQUEST = NonEmptyListProxySerializer(
    component_name="FeedbackRequestBody",
    serializers=[FeedbackInputSerializer, FeedbackInputSerializer(many=True)],
    resource_type_field_name=None,
    many=False,
)
FEEDBACK_RESPONSE = PolymorphicProxySerializer(
    component_name="FeedbackResponseBody",
    serializers=[FeedbackSerializer, FeedbackSerializer(many=True)],
    resource_type_field_name=None,
    many=False,
)


class RequiredBodySchema(AutoSchema):
    """The request body is required: drf-spectacular cannot tell for a PolymorphicProxySerializer (one record
    or a list), whose schema has no required properties of its own, and would mark an empty POST as valid."""

    def _get_request_for_media_type(self, serializer, direction="request"):
        schema, _ = super()._get_request_for_media_type(serializer, direction)
        return schema, schema is not None


class FeedbackView(APIView):
    required_permissions = {"POST": "feedback.add_feedback", "GET": "feedback.view_feedback"}
    public_read = False  # N3_PUBLIC_READ opens the versions, not what end users asked and were answered
    schema = RequiredBodySchema()

    # The export is this list as a file, `?format=jsonl|csv` (DRF's format override; an Accept header works too), not
    # a URL of its own: .../feedback/<agent>/export would be the record whose runId is "export".
    def get_renderers(self):
        renderers = super().get_renderers()
        if self.request.method in ("GET", "HEAD"):
            renderers += [renderer() for renderer in EXPORT_RENDERERS]
        return renderers

    def perform_content_negotiation(self, request, force=False):
        try:
            return super().perform_content_negotiation(request, force)
        except Http404:  # DRF's answer to a ?format= no renderer has
            raise serializers.ValidationError(
                {"format": [f"Choose one of: json, {', '.join(EXPORT_FORMATS)}."]}) from None

    def finalize_response(self, request, response, *args, **kwargs):
        if getattr(response, "exception", False):  # errors in JSON, whatever format was asked for
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)

    @extend_schema(
        operation_id="list_feedback",
        summary="The agent's feedback, filtered, a page at a time (or every record as a JSONL or CSV file)",
        parameters=[AGENT, FeedbackQuerySerializer],
        description=(
            "Records oldest first (by id), each as a POST answers it plus its `reviewer` and `reviews`. Follow "
            "`next` until it is null: the cursor in it is the last id seen, so a page is as fast at any depth and "
            "records stored meanwhile are neither skipped nor repeated. Filters combine (AND). A bad value, an "
            "unknown parameter, a reviewer or version that does not exist, or a cursor not from a link is a 400 "
            "naming the parameter. `format=jsonl` (or csv) streams every record of the filter in the export's "
            "format, which import reads back."
        ),
        responses={
            (200, "application/json"): FeedbackPageSerializer,
            **{(200, renderer.media_type): OpenApiResponse(
                {"type": "string"}, description=f"format={renderer.format}: the export's file, streamed")
               for renderer in EXPORT_RENDERERS},
            **_errors(400, 401, 403, 404, media_type="application/json"),
        },
    )
    def get(self, request: Request, agent: str) -> Response | StreamingHttpResponse:
        query = FeedbackQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        filters = {key: value for key, value in query.validated_data.items()
                   if key not in ("cursor", "page_size", "format")}
        records = feedback_selectors.feedback_for(agent_name=agent, **filters)
        fmt = request.accepted_renderer.format
        if fmt in EXPORT_FORMATS:
            return _download(records, fmt=fmt, label=agent)
        paginator = FeedbackCursorPagination()
        page = paginator.paginate_queryset(feedback_selectors.with_details(records), request, view=self)
        return paginator.get_paginated_response([stored_feedback_data(feedback) for feedback in page])

    @extend_schema(
        operation_id="record_feedback",
        summary="Record feedback on one response, or a list of them",
        parameters=[AGENT],
        description=(
            "The agent is created on its first feedback. `policyVersion` (\"v3\") ties a record to the agent's "
            "version that produced the response; a version the agent does not have is a 400 naming it. "
            "A JSON array stores every record or none "
            "(400 names the bad record's index and field, or both records of a `runId` repeated in it with "
            "different content). A repeated `runId` with the same content returns the stored record with 200 "
            "instead of storing it twice; with different content than the stored one, 409."
        ),
        request=FEEDBACK_REQUEST,
        responses={
            201: OpenApiResponse(FEEDBACK_RESPONSE, description="Stored (a list body answers a list)"),
            200: OpenApiResponse(FEEDBACK_RESPONSE, description="Already stored under these runIds; nothing new"),
            **_errors(400, 401, 403, 409, 413, 415),
        },
        examples=[OpenApiExample("Quick Start", request_only=True, value={
            "prompt": "What is the capital of France?", "response": "Paris is the capital of France.",
            "score": 0.9, "runId": "run_123", "notes": "Accurate answer",
        })],
    )
    def post(self, request: Request, agent: str) -> Response:
        validated = validated_feedback(request.data)
        if isinstance(validated, list):
            results = record_feedback_batch(
                agent_name=agent, records=validated, source=Feedback.Source.API, user=request.user
            )
            created = any(was_created for _, was_created in results)
            body = [feedback_data(feedback) for feedback, _ in results]
        else:
            feedback, created = record_feedback(
                agent_name=agent, **validated, source=Feedback.Source.API, user=request.user
            )
            body = feedback_data(feedback)  # FeedbackSerializer's data, without building one
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


def _download(records, *, fmt: str, label: str) -> StreamingHttpResponse:
    """The records as the export's file, streamed: read in chunks of rows, never all in memory."""
    response = StreamingHttpResponse(importexport.export_lines(queryset=records, fmt=fmt),
                                     content_type=importexport.CONTENT_TYPES[fmt])
    response["Content-Disposition"] = f'attachment; filename="feedback-{label}-{timezone.now():%Y%m%d-%H%M}.{fmt}"'
    return response


class FeedbackRecordView(APIView):
    required_permissions = {"PATCH": "feedback.change_feedback", "GET": "feedback.view_feedback"}
    public_read = False
    schema = RequiredBodySchema()

    @extend_schema(
        operation_id="get_feedback",
        summary="One stored record by its runId, with its reviews",
        parameters=[AGENT, RUN_ID],
        responses={200: StoredFeedbackSerializer, **_errors(401, 403, 404)},
    )
    def get(self, request: Request, agent: str, run_id: str) -> Response:
        return Response(stored_feedback_data(feedback_selectors.get_feedback(agent_name=agent, run_id=run_id)))

    @extend_schema(
        operation_id="update_feedback",
        summary="Score or annotate a stored record (e.g. an end user's thumbs up/down after the response)",
        parameters=[AGENT, RUN_ID],
        description=(
            "Sets `score` and/or `notes` of the agent's record with this `runId`. A score is recorded with the "
            "request's user as reviewer and the time (`reviewedAt`); it is final whatever the record's reviews say "
            "(a lead's decision, kept as that user's review). `score: null` puts the record back in the review "
            "queue and deletes its reviews. Other fields cannot be changed (400)."
        ),
        request=FeedbackUpdateSerializer,
        responses={200: FeedbackSerializer, **_errors(400, 401, 403, 404, 413, 415)},
        examples=[OpenApiExample("Thumbs up", request_only=True, value={"score": 1.0, "notes": "user: thumbs up"})],
    )
    def patch(self, request: Request, agent: str, run_id: str) -> Response:
        changes = validated_update(request.data)
        feedback = update_feedback(agent_name=agent, run_id=run_id, changes=changes, user=request.user)
        return Response(FeedbackSerializer(feedback).data)


class AgentListView(APIView):
    required_permissions = {"GET": "policies.view_policyversion"}

    @extend_schema(
        operation_id="list_agents",
        summary="Every agent, by name: its deployment (as GET .../traffic answers it) and its counts",
        responses={200: AgentSerializer(many=True), **_errors(401, 403)},
    )
    def get(self, request: Request) -> Response:
        rows = [
            {**dataclasses.asdict(deployment.deployment_state(counts.agent)), "feedback_count": counts.feedback_count,
             "scored_count": counts.scored_count, "version_count": counts.version_count}
            for counts in feedback_selectors.agents_with_counts()
        ]
        return Response(AgentSerializer(rows, many=True).data)


class TrainPolicyView(APIView):
    required_permissions = {"POST": "policies.add_policyversion"}

    def handle_exception(self, exc):
        # The services name TrainingConfig fields in snake_case; the client sent them in camelCase.
        return super().handle_exception(TrainPolicyRequestSerializer.as_sent(exc))

    @extend_schema(
        operation_id="train_policy",
        summary="Estimate (dryRun: true) or queue (dryRun: false) training of the agent's next policy version",
        parameters=[AGENT],
        description=(
            "Any TrainingConfig field may be given in camelCase; unknown fields are refused, and so are fields the "
            "chosen algorithm does not read, sequences longer than the base model's positions and runs estimated "
            "beyond the operator's training time limit (400 naming the field; see the README's table). "
            "Needs at least 10 scored feedback samples. `baseModel` must be a built-in model (n3-tiny, "
            "n3-tiny-random), a hub id, or a directory under MODELS_DIR / N3_ALLOWED_MODEL_DIRS. "
            "The dry run answers at once: its time comes from the workers' measurement of this configuration "
            "(`estimateSource: \"measured\"`) or, before there is one, from a rough default (`\"default\"`) while a "
            "worker measures it."
        ),
        request=TrainPolicyRequestSerializer,
        responses={
            200: OpenApiResponse(DryRunSerializer, description="dryRun: the estimate"),
            202: OpenApiResponse(PolicyVersionSerializer, description="Queued: poll `url` for progress"),
            **_errors(400, 401, 403, 404, 413, 415),
        },
        examples=[OpenApiExample("Quick Start", request_only=True, value={
            "dryRun": True, "maxSteps": 1000, "learningRate": 1e-5,
        })],
    )
    def post(self, request: Request, agent: str) -> Response:
        serializer = TrainPolicyRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        overrides = dict(serializer.validated_data)
        dry_run, preset = overrides.pop("dry_run"), overrides.pop("preset", None)
        if dry_run:
            estimate = services.estimate_training_request(agent_name=agent, overrides=overrides, preset=preset)
            return Response(DryRunSerializer(estimate).data, status=status.HTTP_200_OK)
        version = services.queue_training_request(
            agent_name=agent, overrides=overrides, preset=preset, user=request.user
        )
        body = PolicyVersionSerializer(version, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


class PolicyVersionListView(APIView):
    required_permissions = {"GET": "policies.view_policyversion"}

    @extend_schema(
        operation_id="list_policy_versions",
        summary="The agent's policy versions, newest first",
        parameters=[AGENT],
        responses={200: PolicyVersionSummarySerializer(many=True), **_errors(401, 403, 404)},
    )
    def get(self, request: Request, agent: str) -> Response:
        versions = list(selectors.policy_versions_for(agent_name=agent))
        context = {"request": request, "human_scores": deployment.human_scores(versions)}
        body = PolicyVersionSummarySerializer(versions, many=True, context=context).data
        return Response(shown_to(request, body))


class PolicyVersionDetailView(APIView):
    required_permissions = {"GET": "policies.view_policyversion"}

    @extend_schema(
        operation_id="get_policy_version",
        summary="One version: the training result once trained, the job's progress before",
        parameters=[AGENT, VERSION],
        responses={200: PolicyVersionSerializer, **_errors(401, 403, 404)},
    )
    def get(self, request: Request, agent: str, version: str) -> Response:
        found = selectors.get_policy_version(agent_name=agent, version=version)
        return Response(shown_to(request, PolicyVersionSerializer(found, context={"request": request}).data))


class PolicyVersionEventsView(APIView):
    required_permissions = {"GET": "policies.view_policyversion"}

    @extend_schema(
        operation_id="list_policy_version_events",
        summary="The version's training as events, oldest first: queued, started, reward-model epochs, steps, "
                "warnings, evaluation, promotion, end",
        parameters=[AGENT, VERSION, EventQuerySerializer],
        description=(
            "Derived from what the training writes (the version, its step rows, its training.log): reward-model "
            "epochs with their validation MSE, every n-th policy step (about 100 per run, with the first and the "
            "last), the training's warnings, the evaluation's verdict, the promotion decision and the end (trained, "
            "failed or cancelled, with the error). Ids increase in the order events happen and never change: to "
            "follow a running training, poll with `?after=<the last id seen>`. `next` links to the next page while "
            "one is full."
        ),
        responses={200: EventPageSerializer, **_errors(400, 401, 403, 404)},
    )
    def get(self, request: Request, agent: str, version: str) -> Response:
        query = EventQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        found = selectors.get_policy_version(agent_name=agent, version=version)
        page, more = events.version_events(version=found, **query.validated_data)
        following = None
        if more:
            following = request.build_absolute_uri(
                f"{request.path}?after={page[-1].id}&limit={query.validated_data['limit']}")
        body = {"next": following, "results": EventSerializer(page, many=True).data}
        return Response(shown_to(request, body))


class PolicyVersionCancelView(APIView):
    required_permissions = {"POST": "policies.change_policyversion"}

    @extend_schema(
        operation_id="cancel_policy_version",
        summary="Cancel a queued or running training",
        parameters=[AGENT, VERSION],
        description=(
            "A queued version is cancelled at once; a running one stops at its next step "
            "(`cancelRequested: true` until then). 409 if the version already finished."
        ),
        request=None,
        responses={200: PolicyVersionSerializer, **_errors(401, 403, 404, 409)},
    )
    def post(self, request: Request, agent: str, version: str) -> Response:
        cancelled = services.cancel_training(version=selectors.get_policy_version(agent_name=agent, version=version))
        return Response(PolicyVersionSerializer(cancelled, context={"request": request}).data)


class PromoteView(APIView):
    required_permissions = {"POST": "policies.change_policyversion"}

    @extend_schema(
        operation_id="promote_policy_version",
        summary="Make a trained version the agent's active one (it takes all traffic)",
        parameters=[AGENT, VERSION],
        description="Clears a traffic split: the promoted version answers every request for the agent. "
                    "409 for a version that is not trained. `warning` says so when the version's evaluation does "
                    "not find it better than its start.",
        request=None,
        responses={200: PromotionSerializer, **_errors(401, 403, 404, 409)},
    )
    def post(self, request: Request, agent: str, version: str) -> Response:
        promoted = deployment.promote_version(agent_name=agent, version=version)
        state = dataclasses.asdict(deployment.deployment_state(promoted))
        state["warning"] = deployment.promotion_warning(promoted.active_version)
        return Response(PromotionSerializer(state).data)


class TrafficView(APIView):
    required_permissions = {"GET": "policies.view_policyversion", "PUT": "policies.change_policyversion"}

    @extend_schema(
        operation_id="get_deployment",
        summary="The agent's deployment: active version, traffic split, record-served switch",
        parameters=[AGENT],
        responses={200: DeploymentSerializer, **_errors(401, 403, 404)},
    )
    def get(self, request: Request, agent: str) -> Response:
        return Response(DeploymentSerializer(deployment.deployment_state(selectors.get_agent(name=agent))).data)

    @extend_schema(
        operation_id="set_traffic",
        summary="Split the agent's traffic among trained versions (sticky per end user)",
        parameters=[AGENT],
        description="Replaces the split; `{}` clears it (all traffic to the active version). Each end user (the "
                    "OpenAI `user` field) is assigned to one version by a hash, the same one while the split stays. "
                    "400 for bad shares or an unknown version, 409 for a version not trained.",
        request={"application/json": TRAFFIC_REQUEST},
        responses={200: DeploymentSerializer, **_errors(400, 401, 403, 404, 409, 413, 415)},
        examples=[OpenApiExample("A/B test", request_only=True, value={"v3": 0.9, "v4": 0.1})],
    )
    def put(self, request: Request, agent: str) -> Response:
        shares, record_served = traffic_request(request.data)
        updated = deployment.set_traffic(agent_name=agent, shares=shares, record_served=record_served)
        return Response(DeploymentSerializer(deployment.deployment_state(updated)).data)


class CompareView(APIView):
    required_permissions = {"GET": "policies.view_policyversion"}

    @extend_schema(
        operation_id="compare_policy_versions",
        summary="Two versions side by side: their figures and evaluations, human scores and the difference of the "
                "human scores with its interval",
        parameters=[AGENT, CompareQuerySerializer],
        description=(
            "What the admin's compare page shows, as data. `a` and `b` as each one's list entry (metrics with the "
            "evaluation against the model it started from, `humanScore`), `humanScoreDifference` (b's mean human "
            "score minus a's, 95 % Welch interval) and the pair's latest blind comparison. Each version's reward is "
            "measured by its own reward model, so rewards are not comparable across versions: compare their "
            "evaluations, human scores and blind comparisons instead. 400 when a or b is missing, repeated or "
            "names the same version as the other; 404 for an unknown agent or version."
        ),
        responses={200: VersionComparisonSerializer, **_errors(400, 401, 403, 404)},
    )
    def get(self, request: Request, agent: str) -> Response:
        query = CompareQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        a, b = training_selectors.version_pair(agent_name=agent, **query.validated_data)
        compared = training_selectors.version_comparison(a=a, b=b)
        blind = feedback_selectors.latest_comparison_of(version_a=a, version_b=b)
        body = VersionComparisonSerializer(compared, context={"request": request, "blind_comparison": blind}).data
        return Response(shown_to(request, body))


class ComparisonListView(APIView):
    """Blind comparisons of two versions of the agent. Creating one needs ``policies.change_policyversion``, as the
    admin's "Start blind comparison" does: it queues a worker job that loads both policies and generates their
    responses, and asks reviewers for their time; viewing versions is not enough to start that."""

    required_permissions = {"GET": "policies.view_policyversion", "POST": "policies.change_policyversion"}

    @extend_schema(
        operation_id="list_comparisons",
        summary="The agent's blind comparisons, newest first, each with its result so far",
        parameters=[AGENT, ComparisonQuerySerializer],
        description="`next` links to the next (older) page while one is full.",
        responses={200: ComparisonPageSerializer, **_errors(400, 401, 403, 404)},
    )
    def get(self, request: Request, agent: str) -> Response:
        query = ComparisonQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        limit = query.validated_data["limit"]
        page, more = feedback_selectors.comparisons_for(agent_name=agent, **query.validated_data)
        following = None
        if more:
            following = request.build_absolute_uri(f"{request.path}?before={page[-1].comparison.pk}&limit={limit}")
        body = {"next": following, "results": ComparisonSerializer(page, many=True, context={"request": request}).data}
        return Response(shown_to(request, body))

    @extend_schema(
        operation_id="start_comparison",
        summary="Start a blind comparison of two trained versions: a worker generates both versions' responses, "
                "then reviewers vote in the blind queue (`reviewUrl`)",
        parameters=[AGENT],
        description=(
            "The same as the compare page's \"Start blind comparison\": `count` pairs whose responses differ, on "
            "prompts neither version trained on (held out of both first, then the agent's newest prompts neither "
            "saw); pairs with identical responses are ties without a vote, made up for by more prompts (up to 4 per "
            "pair). The older version is stored as A, whatever the order given; the result is B's win rate over A. "
            "Poll the comparison's `url` "
            "until `status` is ready (or failed, with `error`). 400 when a or b is missing, both name one version, "
            "a version is not trained or has no policy files, or there is no prompt to compare on; 404 for an "
            "unknown agent or version. Needs policies.change_policyversion."
        ),
        request=ComparisonRequestSerializer,
        responses={202: OpenApiResponse(ComparisonSerializer, description="Started: its responses are being "
                                        "generated"),
                   **_errors(400, 401, 403, 404, 413, 415)},
        examples=[OpenApiExample("v2 against v1", request_only=True, value={"a": "v1", "b": "v2", "count": 20})],
    )
    def post(self, request: Request, agent: str) -> Response:
        serializer = ComparisonRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        a, b = training_selectors.version_pair(agent_name=agent, a=data["a"], b=data["b"])
        comparison = blind_comparisons.start_comparison(version=b, other=a, count=data["count"], user=request.user)
        result = feedback_selectors.get_comparison(agent_name=agent, comparison_id=comparison.pk)
        body = ComparisonSerializer(result, context={"request": request}).data
        return Response(shown_to(request, body), status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


class ComparisonDetailView(APIView):
    required_permissions = {"GET": "policies.view_policyversion"}

    @extend_schema(
        operation_id="get_comparison",
        summary="One blind comparison: its status and result (B's win rate over A with its 95 % interval)",
        parameters=[AGENT, COMPARISON],
        responses={200: ComparisonSerializer, **_errors(401, 403, 404)},
    )
    def get(self, request: Request, agent: str, comparison: str) -> Response:
        result = feedback_selectors.get_comparison(agent_name=agent, comparison_id=int(comparison))
        return Response(shown_to(request, ComparisonSerializer(result, context={"request": request}).data))
