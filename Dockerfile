# ZeoRaft node image: `zeoraft server`, configured entirely by ZEORAFT_* environment variables
# (see `zeoraft help`). docker-compose.yml runs three of these as a cluster.

# --- build: compile TypeScript (generated proto types first), then keep production deps only ---
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY proto ./proto
COPY src ./src
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

# --- runtime: compiled JS, the .proto contract (loaded at run time), production node_modules ---
FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    ZEORAFT_DATA_DIR=/data \
    ZEORAFT_LISTEN=0.0.0.0:7101 \
    ZEORAFT_HTTP_LISTEN=0.0.0.0:7301
WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
COPY --from=build /app/proto ./proto
COPY bin ./bin
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
# client gRPC, Raft peers, HTTP (/metrics, /livez, /readyz); compose overrides them per node
EXPOSE 7101 7201 7301
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "const u='http://127.0.0.1:'+(process.env.ZEORAFT_HTTP_LISTEN||'').split(':').pop()+'/readyz';require('http').get(u,r=>process.exit(r.statusCode===200?0:1)).on('error',()=>process.exit(1))"]
ENTRYPOINT ["node", "bin/zeoraft"]
CMD ["server"]
