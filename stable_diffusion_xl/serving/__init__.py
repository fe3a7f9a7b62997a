"""Ray Serve around the engine: SDXL_* settings (environment, settings) and what one call may ask (limits), the
transport every API shares (transport), images to wire bytes (encoding), metrics, trainings as Ray tasks beside the
replicas (trainings), serving on this machine (local_serve) and a gRPC client for Instill's CallRequest (client)."""
