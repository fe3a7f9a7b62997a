"""The dialects callers speak, a module each: Instill over gRPC and HTTP (instill), OpenAI Images
(openai_images, and its edits: openai_edits), Azure ML (azure_ml), cog (cog_predictions), a plain body
(plain_predict), trainings over HTTP (trainings) and the try-it page (page, ui/); how a peer API names our fields
(vocabulary); and which one answers a call (routes)."""
