"""/v1/models: built-in bases and the organisation's fine-tunes; delete; GGUF export."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Literal

from fastapi import FastAPI
from fastapi.responses import FileResponse

from tunesmith.serve.errors import APIError, in_use
from tunesmith.serve.names import is_encoder
from tunesmith.serve.routes.params import Org
from tunesmith.serve.store import Store

BASE_MODEL_CREATED = 1730419200  # 2024-11-01, when SmolLM2 was released


OutType = Literal["f32", "f16", "bf16", "q8_0"]  # export/gguf.py's OUTTYPES, which test_serve_openapi compares


def add_routes(app: FastAPI) -> None:
    from tunesmith.models import BUILTIN_MODELS, ENCODER_MODELS

    store: Store = app.state.store
    exports = app.state.executors["exports"]

    def fine_tune(org: dict, model_id: str) -> dict:
        row = store.model(org["id"], model_id)
        if row is None:
            raise APIError(404, f"The model {model_id!r} does not exist", param="model", code="model_not_found")
        return row

    def base_object(name: str) -> dict:
        return {"id": name, "object": "model", "created": BASE_MODEL_CREATED, "owned_by": "tunesmith"}

    def ft_object(row: dict) -> dict:
        return {"id": row["id"], "object": "model", "created": row["created"], "owned_by": row["org_id"]}

    # Registered before the routes below: their {model_id:path} would take ".../content" too.
    @app.get("/v1/models/{model_id:path}/content")
    async def model_content(model_id: str, org: Org, format: Literal["gguf"] = "gguf", outtype: OutType = "f16"):
        """The fine-tuned model as one GGUF file (llama.cpp, Ollama, LM Studio), written on first request."""
        # Imported here: the exporters bring torch and transformers, which the server needs only now.
        from tunesmith.errors import TunesmithError
        from tunesmith.export import export_run

        if is_encoder(model_id):
            fine_tune(org, model_id)  # another organisation's model answers 404, as a missing one
            raise APIError(
                400,
                f"{model_id!r} is an embedding model: GGUF export is for the models that generate text",
                param="model",
                code="model_not_exportable",
            )
        run = Path(fine_tune(org, model_id)["adapter_path"]).parent
        path = run / "export" / f"model-{outtype}.gguf"
        if not path.is_file():
            try:  # the export blocks for seconds: off the event loop
                await exports.run(org["id"], export_run, run, "gguf", outtype, path)
            except TunesmithError as error:
                raise APIError(400, str(error), param="model", code="model_not_exportable") from None
        filename = re.sub(r"[^A-Za-z0-9._-]", "_", model_id) + f"-{outtype}.gguf"
        return FileResponse(path, media_type="application/octet-stream", filename=filename)

    @app.get("/v1/models")
    def list_models(org: Org):
        bases = [base_object(n) for n in BUILTIN_MODELS + ENCODER_MODELS]
        data = bases + [ft_object(r) for r in store.list_models(org["id"])]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}")
    def retrieve_model(model_id: str, org: Org):
        if model_id in BUILTIN_MODELS + ENCODER_MODELS:
            return base_object(model_id)
        return ft_object(fine_tune(org, model_id))

    @app.delete("/v1/models/{model_id:path}")
    def delete_model(model_id: str, org: Org):
        """Delete a fine-tuned model and its run's outputs.

        A model that other fine-tunes were trained from (they use its ``merged/`` weights as their
        base) or that an unfinished job trains from cannot be deleted: 409 naming them. Copying the
        parent's weights into every child was the alternative; refusing keeps disk use what the
        organisation sees, and the dependants can be deleted first.
        """
        if model_id in BUILTIN_MODELS + ENCODER_MODELS:
            raise APIError(
                400,
                f"{model_id!r} is a base model; only fine-tuned models can be deleted",
                param="model",
                code="model_not_deletable",
            )
        row = fine_tune(org, model_id)
        dependants = store.delete_model(org["id"], model_id)
        if dependants:
            raise in_use(
                f"model {model_id} cannot be deleted: {', '.join(dependants)} "
                f"{'is' if len(dependants) == 1 else 'are'} trained from it; delete or cancel "
                f"{'it' if len(dependants) == 1 else 'them'} first",
                "model",
            )
        app.state.engine.forget(row["job_id"])
        # The adapter, merged weights, checkpoints and exports: all of the run's outputs.
        shutil.rmtree(Path(row["adapter_path"]).parent, ignore_errors=True)
        return {"id": model_id, "object": "model", "deleted": True}
