# The control plane only: the node agent is a package of its own, installed on the GPU servers
# (deploy/systemd/). Not built on the project's CI machines, which have no Docker engine.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
COPY sdk/package.json sdk/
COPY agent/package.json agent/
COPY cli/package.json cli/
RUN npm ci
COPY . .
RUN npm run build:server && npm run build:console

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/package.json /app/package-lock.json ./
COPY --from=build /app/sdk/package.json sdk/
COPY --from=build /app/agent/package.json agent/
COPY --from=build /app/cli/package.json cli/
RUN npm ci --omit=dev
COPY --from=build /app/dist ./dist
USER node
EXPOSE 8080
CMD ["node", "dist/src/main.js"]
